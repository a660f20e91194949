#!/usr/bin/env python
"""Local CLI: ``python flows/run.py {init,demo,outbox,broker,ega,...} --help``.

Runs flows in-process against the home's long-lived local Prefect API (started on
first use and shared; deployments/localapi.py), or PREFECT_API_URL when set, with
every embedded default under INGEST_HOME (default ./var).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running as a script puts flows/ first on sys.path, not the project
    sys.path.insert(0, str(ROOT))
if sys.path[1:2] and Path(sys.path[0]).resolve() == ROOT / "flows":
    sys.path.pop(0)  # never let flows/ shadow top-level packages

import tasks  # noqa: E402,F401  (INGEST_HOME → PREFECT_HOME before Prefect loads)


def build_parser() -> argparse.ArgumentParser:
    from flows import commands  # (every command's module: what a call through the warm runner never imports)

    parser = argparse.ArgumentParser(
        prog="python flows/run.py",
        description="Archive ingest: run flows locally with embedded defaults under $INGEST_HOME (default ./var).",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show tracebacks of system errors on the console (the Prefect UI always has them)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in commands.REGISTRARS:
        register(sub)
    return parser


def parse_for_runner(argv: list[str]) -> Any:
    """In a warm runner's fork, for a caller that sent its command line unparsed: the parsed arguments,
    an exit code when parsing ended the call (--help, a usage error), or None for a command that runs in
    its caller's own process (no API needed, or a daemon)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "needs_api", True) or not getattr(args, "warm_ok", True):
        return None
    return args


def main(argv: list[str] | None = None, *, warm: bool = False, parsed: argparse.Namespace | None = None,
         drain: bool = True) -> int:
    """Parse, make sure the API is there, run the command: in the home's warm runner when ``warm``
    (a real command line) and one is up (deployments/warm.py), else in this process. ``drain=False``:
    the caller ships Prefect's buffered logs and events itself (a warm fork does, after answering)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parsed or build_parser().parse_args(argv)
    if getattr(args, "needs_api", True):
        from deployments.localapi import LocalApiError, ensure, home, started_here

        try:
            ensure()
        except LocalApiError as exc:
            print(f"archive-ingest: {exc}", file=sys.stderr)
            return 2
        if warm and started_here() is None and getattr(args, "warm_ok", True):
            from deployments.warm_wire import run_in_runner

            code = run_in_runner(home(), argv)
            if code is not None:
                return code
    if not args.verbose and getattr(args, "needs_api", True):  # (commands without flows import no Prefect)
        from tasks.run_logging import quiet_console_tracebacks

        quiet_console_tracebacks()
    try:
        return int(args.handler(args) or 0)
    finally:
        if drain and getattr(args, "needs_api", True) and "prefect.events.worker" in sys.modules:
            # ship the run's logs and events now, not in a noisy atexit (never without an API: that
            # would make Prefect start a temporary server)
            from flows.cli_common import drain_prefect_workers

            try:
                drain_prefect_workers()
            except Exception:  # noqa: BLE001 - an unreachable API must not change the exit status
                pass


if __name__ == "__main__":
    # First, before this CLI's own imports: a warm runner's fork parses and runs the whole call
    from deployments.warm_wire import run_in_runner
    from tasks.home import ingest_home

    code = run_in_runner(ingest_home(), sys.argv[1:], unparsed=True)
    sys.exit(main(warm=True) if code is None else code)
