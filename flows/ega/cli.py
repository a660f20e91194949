"""``python flows/run.py ega`` (one ingest), ``broker setup`` and ``ega-inbox`` (inbox notifications)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.cli_common import add_concurrency, emit, local_run, run_batch

EXIT_COMPLETED, EXIT_USER_ERROR, EXIT_SYSTEM_ERROR = 0, 1, 2


def run_message(raw: dict, *, correlation_id: str | None = None, config_block: str = "default") -> tuple[int, dict]:
    """Run one ingest in-process and classify the outcome the way CEGA would.

    The broker block's protocol decides how the message is read: legacy (LocalEGA) or sda.
    """
    if _protocol(config_block) == "sda":
        return run_sda_message(raw, correlation_id=correlation_id, config_block=config_block)
    from flows.ega.flow import failure_summary, ingest_ega_file
    from flows.ega.messages import validate_message
    from tasks.errors import UserError, is_user_error

    try:
        message = validate_message(raw)
    except UserError as exc:
        return EXIT_USER_ERROR, {"stable_id": raw.get("stable_id") if isinstance(raw, dict) else None,
                                 "state": "ERROR", "vault_uri": None, "checksums": {}, "error": exc.message}
    try:
        with local_run():
            summary = ingest_ega_file(message, correlation_id=correlation_id, config_block=config_block)
        return EXIT_COMPLETED, summary
    except Exception as exc:
        code = EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR
        return code, failure_summary(message, exc, config_block)


def _protocol(config_block: str) -> str:
    """The broker block's protocol; the blocks the flow loads next come with it (one API request)."""
    from blocks.register import prefetch_blocks
    from flows.ega.config import block_types

    _, broker, _, _ = prefetch_blocks(block_types(), config_block)
    return broker.protocol


def run_sda_message(raw: dict, *, correlation_id: str | None = None, config_block: str = "default",
                    received_at=None) -> tuple[int, dict]:
    """One SDA message (ingest, cancel or accession) as its own flow run; a refused one exits 1."""
    from flows.ega.sda_flow import handle_sda_message
    from tasks.errors import UserError, is_user_error

    raw = raw if isinstance(raw, dict) else {}
    base = {"stable_id": raw.get("accession_id"), "user": raw.get("user"), "filepath": raw.get("filepath"),
            "vault_uri": None, "checksums": {}}
    try:
        with local_run():
            state = handle_sda_message(raw, correlation_id=correlation_id, config_block=config_block,
                                       received_at=received_at, return_state=True)
        if state.is_cancelled():  # an ingest a cancel reached: undone, not an error
            return EXIT_COMPLETED, {**base, "state": "CANCELLED", "error": state.message}
        summary = state.result()
    except Exception as exc:  # noqa: BLE001 - classified below: user error 1, anything else 2
        reason = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        code = EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR
        return code, {**base, "state": "ERROR" if code == EXIT_USER_ERROR else "FAILED", "error": reason}
    return (EXIT_USER_ERROR if summary.get("state") == "REFUSED" else EXIT_COMPLETED), summary


def run_message_file(source: str, *, correlation_id: str | None = None,
                     config_block: str = "default") -> tuple[int, dict]:
    """One message file (or - for stdin) through ``run_message``."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        raw = json.loads(text)
    except (OSError, ValueError) as exc:
        reason = f"message is not valid JSON: {exc}" if isinstance(exc, ValueError) else f"cannot read {source}: {exc}"
        return EXIT_USER_ERROR, {"message": source, "stable_id": None, "state": "ERROR", "vault_uri": None,
                                 "checksums": {}, "error": reason}
    return run_message(raw, correlation_id=correlation_id, config_block=config_block)


def _ega(args: argparse.Namespace) -> int:
    if len(args.message) == 1:
        code, summary = run_message_file(args.message[0], correlation_id=args.correlation_id,
                                         config_block=args.config)
        emit(summary)
        return code
    return run_batch(args.message, lambda m: run_message_file(m, correlation_id=args.correlation_id,
                                                               config_block=args.config),
                     concurrency=args.concurrency, describe=lambda m: {"message": m, "state": "ERROR"})


def _broker(args: argparse.Namespace) -> int:
    from blocks.broker import BrokerBlock
    from blocks.register import load_block
    from flows.cli_common import NO_BROKER
    from flows.ega.topology import setup, setup_sda

    block = load_block(BrokerBlock, args.config)
    if args.action == "protocol":
        if args.value:
            if args.value not in ("legacy", "sda"):
                print("protocol must be legacy or sda", file=sys.stderr)
                return 1
            block.protocol = args.value
            if args.sda_exchange:
                block.sda_exchange = args.sda_exchange
            block.save(args.config, overwrite=True)
        emit({"config": args.config, "protocol": block.protocol, "sda_exchange": block.sda_exchange,
              "status_exchange": block.status_exchange, "internal_exchange": block.internal_exchange})
        return 0
    amqp_url = args.amqp_url or (block.amqp_url.get_secret_value() if block.amqp_url else None)
    if not amqp_url:
        print(NO_BROKER, file=sys.stderr)
        return 2
    if block.protocol == "sda":
        if args.local_cega:
            print("--local-cega is for the legacy protocol; an SDA node keeps CEGA's messages in its own queues",
                  file=sys.stderr)
            return 1
        emit(setup_sda(amqp_url, exchange=block.sda_exchange))
        return 0
    emit(setup(amqp_url, local_cega=args.local_cega, status_exchange=block.status_exchange,
               internal_exchange=block.internal_exchange))
    return 0


def _inbox(args: argparse.Namespace) -> int:
    from flows.ega.inbox_notify import notify_inbox

    with local_run():
        emit(notify_inbox(user=args.user, inbox_root=args.inbox_root, config_block=args.config))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ega", help="ingest EGA uploads, one per CEGA message",
                       description="Prints one JSON line {stable_id, state, vault_uri, checksums, error?} per "
                                   "message; exit 0 completed, 1 user error, 2 system error (the worst of them).")
    p.add_argument("--message", required=True, nargs="+", metavar="FILE",
                   help="message JSON file(s), or - for stdin; each gets its own flow run")
    add_concurrency(p)
    p.add_argument("--correlation-id", help="carried on every status message")
    p.add_argument("--config", default="default", help="block document name for vault/registry/broker/keyserver")
    p.set_defaults(handler=_ega)

    b = sub.add_parser("broker", help="declare the LegaMQ topology (exchanges lega/cega, queues files/archived/qc)",
                       description="Legacy protocol: exchanges lega and cega, queues files, archived, qc. cega stays "
                                   "unbound until the shovel to Central EGA exists (docs/ega.md): status messages "
                                   "are refused until then, unless --local-cega keeps them in local queues. SDA "
                                   "protocol (broker block): the node's exchange and queues, for a local broker.")
    b.add_argument("action", choices=["setup", "protocol"],
                   help="setup: declare exchanges and queues; protocol [legacy|sda]: show or set the EGA protocol")
    b.add_argument("value", nargs="?", help="protocol: legacy or sda")
    b.add_argument("--sda-exchange", help="protocol sda: the node's exchange (default sda)")
    b.add_argument("--local-cega", action="store_true",
                   help="no CEGA connection: bind queues completed, errors, inbox, inbox.checksums (and processing) "
                        "to cega")
    b.add_argument("--amqp-url", help="broker URL (default: the broker block)")
    b.add_argument("--config", default="default")
    b.set_defaults(handler=_broker)

    i = sub.add_parser("ega-inbox", help="scan inboxes and publish files.inbox / files.inbox.checksums to CEGA")
    i.add_argument("--user", help="only this user's inbox")
    i.add_argument("--inbox-root", help="default $INGEST_HOME/inbox")
    i.add_argument("--config", default="default")
    i.set_defaults(handler=_inbox)
