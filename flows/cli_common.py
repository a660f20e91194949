"""Helpers shared by the CLI subcommands: JSON output and local-run settings."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def emit(obj: Any) -> None:
    """Print one JSON line: the machine-readable result every subcommand ends with."""
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


@contextmanager
def local_run() -> Iterator[None]:
    """Settings for a one-shot local run: no flow heartbeats (they cost ~1 s at exit)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def amqp_url_or_none(explicit: str | None, config_block: str = "default") -> str | None:
    """The broker URL to use: the command line's, else the broker block's (None: no broker)."""
    if explicit:
        return explicit
    from blocks.broker import BrokerBlock
    from blocks.register import load_block

    block = load_block(BrokerBlock, config_block)
    return block.amqp_url.get_secret_value() if block.amqp_url else None


NO_BROKER = "no broker configured: pass --amqp-url or save a broker block (init --amqp-url)"
