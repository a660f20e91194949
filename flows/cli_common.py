"""Helpers shared by the CLI subcommands: JSON output and local-run settings."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def emit(obj: Any) -> None:
    """Print one JSON line: the machine-readable result every subcommand ends with."""
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=True) + "\n")
    sys.stdout.flush()


@contextmanager
def local_run() -> Iterator[None]:
    """Settings for a one-shot local run: no flow heartbeats (they cost ~1 s at exit)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None:  # already so (the warm runner's calls)
        yield
        return
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


def run_batch(items: Iterable[T], run_one: Callable[[T], tuple[int, dict[str, Any]]], *, concurrency: int,
              describe: Callable[[T], dict[str, Any]]) -> int:
    """Run each item as its own flow run, at most ``concurrency`` at once; one JSON line per item as it
    finishes; the exit code is the worst of them (2 system error > 1 user error > 0)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    items = list(items)
    worst = 0
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(items)))) as pool:
        futures = {pool.submit(run_one, item): item for item in items}
        for future in as_completed(futures):
            try:
                code, summary = future.result()
            except Exception as exc:  # a bug in one item must not hide the others' results
                code, summary = 2, {**describe(futures[future]), "error": f"{type(exc).__name__}: {exc}"}
            emit(summary)
            worst = max(worst, code)
    return worst


def add_concurrency(parser: Any) -> None:
    parser.add_argument("--concurrency", type=int, default=2, metavar="N",
                        help="with several inputs: flow runs at once (default 2; each input gets its own run)")


def drain_prefect_workers() -> None:
    """Ship buffered logs and events now, before the API they go to stops (else they error at exit)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())
