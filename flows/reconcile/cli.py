"""``python flows/run.py reconcile [--dry-run]``: the scheduled reconcile flow, run now."""
from __future__ import annotations

import argparse
import logging

from flows.cli_common import emit, local_run


def _reconcile(args: argparse.Namespace) -> int:
    from flows.reconcile.flow import reconcile

    logging.getLogger("flows.reconcile.steps").setLevel(logging.INFO)
    with local_run():
        result = reconcile(dry_run=args.dry_run, stuck_after_minutes=args.stuck_after_minutes,
                           temporaries_after_minutes=args.temporaries_after_minutes,
                           max_attempts=args.max_attempts, config_block=args.config)
    emit(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconcile", help="resume stuck ingests, remove orphaned temporaries, report orphans",
                       description="Finds, in every domain, ingests left in_ingestion with no live run past "
                                   "--stuck-after-minutes and re-runs them (a deployed run again, a CLI run "
                                   "through its flow's deployment), or marks them for review past the attempt "
                                   "limit; removes staging .part and unowned staged files, finished APT interim "
                                   "data, .vault-tmp files and S3 incomplete multipart uploads older than "
                                   "--temporaries-after-minutes; reports NGAS orphans. Each action is a PREMIS "
                                   "event. The deployment 'reconcile/reconcile' runs it hourly.")
    p.add_argument("--dry-run", action="store_true", help="report what would be done, change nothing")
    p.add_argument("--stuck-after-minutes", type=float, default=120, metavar="M",
                   help="an ingest in progress untouched this long, with no live run, is stuck (default 120)")
    p.add_argument("--temporaries-after-minutes", type=float, default=360, metavar="M",
                   help="temporaries untouched this long are orphaned (default 360)")
    p.add_argument("--max-attempts", type=int, help="attempt limit (default: Prefect variable "
                                                      "ingest_max_attempts, else 3)")
    p.add_argument("--config", default="default", help="block document name")
    p.set_defaults(handler=_reconcile)
