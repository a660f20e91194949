"""``python flows/run.py status``: the archives at a glance (a table; ``--json`` for machines)."""
from __future__ import annotations

import argparse
import json

from flows.fixity.plan import DOMAINS
from flows.status.report import DEFAULT_STUCK_AFTER, render_table


def _status(args: argparse.Namespace) -> int:
    from flows.status.flow import status_report

    status = status_report(args.config, args.stuck_after, [args.domain] if args.domain else None)
    if args.json:
        print(json.dumps(status, default=str, sort_keys=True))
    else:
        print(render_table(status))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="per archive: stored, in progress, stuck, failed, fixity, review",
                       description="Per domain: ingested objects and stored bytes; queued, in progress and stuck "
                                   "ingests; failures by reason and by user or system error; last fixity check, "
                                   "objects never checked, mismatches, missing objects and ingests marked for "
                                   "review. The scheduled 'archive-status' run shows the same as an artifact.")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--domain", choices=DOMAINS, help="one archive only")
    p.add_argument("--stuck-after", default=DEFAULT_STUCK_AFTER, metavar="AGE",
                   help=f"an ingest with no progress for AGE is stuck (default {DEFAULT_STUCK_AFTER})")
    p.add_argument("--config", default="default", help="registry block document name")
    p.set_defaults(handler=_status)
