"""``python flows/run.py fits | fits-work-orders | fits-dir | fits-reingest | svo-sync | fits-access``.

Every command ends with one JSON line. Exit codes: 0 ingested/skipped (fits-access:
access granted), 1 bad input (fits-access: no access), 2 system error.
"""
from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from flows.cli_common import emit, local_run

EXIT_OK, EXIT_USER_ERROR, EXIT_SYSTEM_ERROR = 0, 1, 2


def run_cube(path: str, *, oid: str | None = None, force: bool = False, previews: bool = True,
             submit_to_svo: bool = False, owner_emails: list[str] | None = None, swedish_data: bool = False,
             config_block: str = "default", science_root: str | None = None) -> tuple[int, dict[str, Any]]:
    """One cube in-process; the outcome classified for the exit code."""
    from flows.fits.flow import failure_summary, ingest_fits_cube
    from tasks.errors import is_user_error

    try:
        with local_run():
            summary = ingest_fits_cube(path, oid=oid, owner_emails=owner_emails or [], swedish_data=swedish_data,
                                       force=force, previews=previews, submit_to_svo=submit_to_svo,
                                       config_block=config_block, science_root=science_root)
        return EXIT_OK, summary
    except Exception as exc:
        code = EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR
        return code, failure_summary(path, exc, config_block, science_root)


def queue_cube(path: str, *, oid: str | None = None, force: bool = False, previews: bool = True,
               submit_to_svo: bool = False, owner_emails: list[str] | None = None, swedish_data: bool = False,
               config_block: str = "default", science_root: str | None = None) -> tuple[int, dict[str, Any]]:
    """Queue the cube for ``process-fits-work-orders`` and return at once (no flow run of its own)."""
    from flows.fits.records import work_order
    from flows.fits.steps import CubeRequest, describe_error, load_config, queue_request
    from tasks.errors import is_user_error

    request = CubeRequest(path, oid, tuple(owner_emails or ()), swedish_data, force, previews, submit_to_svo)
    try:
        cfg = load_config(config_block, science_root=science_root)
        try:
            row = queue_request(cfg, request)
        finally:
            cfg.close()
    except Exception as exc:
        code = EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR
        return code, {"oid": None, "state": "failed", "path": path, "work_order": None, "error": describe_error(exc)}
    # an order already Started stays with its processor; the request is not lost, it is that run's
    return EXIT_OK, {"oid": row["oid"], "state": "queued" if row["state"] == "Queued" else row["state"].lower(),
                     "path": row["path"], "work_order": work_order(row)}


def run_work_orders(*, limit: int = 1000, batch_size: int | None = None, config_block: str = "default",
                    science_root: str | None = None) -> tuple[int, dict[str, Any]]:
    from flows.fits.flow import DEFAULT_BATCH_SIZE, process_work_orders
    from flows.fits.steps import describe_error
    from tasks.errors import is_user_error

    try:
        with local_run():
            summary = process_work_orders(limit=limit, batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                          config_block=config_block, science_root=science_root)
    except Exception as exc:
        code = EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR
        return code, {"root": "work orders", "state": "failed", "error": describe_error(exc)}
    return _bulk_code(summary), summary


def _bulk_code(summary: dict[str, Any]) -> int:
    if summary.get("system_errors"):
        return EXIT_SYSTEM_ERROR
    return EXIT_USER_ERROR if summary["counts"].get("failed") else EXIT_OK


def run_directory(root: str, *, force: bool = False, previews: bool = True, submit_to_svo: bool = False,
                  batch_size: int | None = None, config_block: str = "default",
                  science_root: str | None = None) -> tuple[int, dict[str, Any]]:
    from flows.fits.flow import DEFAULT_BATCH_SIZE, ingest_fits_directory
    from flows.fits.steps import describe_error
    from tasks.errors import is_user_error

    try:
        with local_run():
            summary = ingest_fits_directory(root, force=force, previews=previews, submit_to_svo=submit_to_svo,
                                            batch_size=batch_size or DEFAULT_BATCH_SIZE, config_block=config_block,
                                            science_root=science_root)
    except Exception as exc:
        code = EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR
        return code, {"root": root, "state": "failed", "error": describe_error(exc)}
    return _bulk_code(summary), summary


def run_sync(*, dry_run: bool = False, update_existing: bool = False,
             config_block: str = "default", science_root: str | None = None) -> tuple[int, dict[str, Any]]:
    from flows.fits.steps import describe_error
    from flows.fits.sync import sync_with_svo
    from tasks.errors import is_user_error

    try:
        with local_run():
            summary = sync_with_svo(dry_run=dry_run, update_existing=update_existing, config_block=config_block,
                                    science_root=science_root)
    except Exception as exc:
        code = EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR
        return code, {"state": "failed", "dry_run": dry_run, "error": describe_error(exc)}
    return (EXIT_USER_ERROR if summary["failed"] else EXIT_OK), summary


def check_access(oid: str, user: str | None, groups: list[str], *, on: dt.date | None = None,
                 config_block: str = "default") -> tuple[int, dict[str, Any]]:
    """May this user (with these groups) download the cube on that day?"""
    from blocks.register import load_block
    from blocks.registry import RegistryBlock
    from flows.fits.access import Grant, has_access
    from flows.fits.records import access

    today = on or dt.date.today()
    with load_block(RegistryBlock, config_block).open() as registry:
        row = access(registry, oid)
    if row is None:
        return EXIT_SYSTEM_ERROR, {"oid": oid, "access": None, "error": f"no cube with oid {oid!r}"}
    grants = [Grant(g["kind"], g["principal"]) for g in row["grants"]]
    allowed = has_access(row["release_date"], grants, user, groups, today)
    if today >= row["release_date"]:
        reason = f"released on {row['release_date'].isoformat()}"
    elif allowed:
        reason = f"embargoed until {row['release_date'].isoformat()}, but granted"
    else:
        reason = f"embargoed until {row['release_date'].isoformat()} and not granted"
    return (EXIT_OK if allowed else EXIT_USER_ERROR), {
        "oid": oid, "user": user, "groups": groups, "on": today.isoformat(), "access": allowed, "reason": reason,
        "release_date": row["release_date"].isoformat(), "release_comment": row["release_comment"]}


# ---------------------------------------------------------------- argparse glue


def _fits(args: argparse.Namespace) -> int:
    runner = queue_cube if args.queue else run_cube
    code, summary = runner(args.path, oid=args.oid, force=args.force, previews=not args.no_previews,
                             submit_to_svo=args.svo, owner_emails=args.owner, swedish_data=args.swedish,
                             config_block=args.config, science_root=args.science_root)
    emit(summary)
    return code


def _fits_work_orders(args: argparse.Namespace) -> int:
    code, summary = run_work_orders(limit=args.limit, batch_size=args.batch_size, config_block=args.config,
                                    science_root=args.science_root)
    emit(summary)
    return code


def _fits_dir(args: argparse.Namespace) -> int:
    code, summary = run_directory(args.root, force=args.force, previews=not args.no_previews, submit_to_svo=args.svo,
                                  batch_size=args.batch_size, config_block=args.config,
                                  science_root=args.science_root)
    emit(summary)
    return code


def _fits_reingest(args: argparse.Namespace) -> int:
    from flows.fits.flow import DEFAULT_BATCH_SIZE, reingest_all
    from flows.fits.steps import describe_error

    try:
        with local_run():
            summary = reingest_all(force=not args.changed_only, previews=not args.no_previews,
                                   batch_size=args.batch_size or DEFAULT_BATCH_SIZE, config_block=args.config,
                                   science_root=args.science_root)
    except Exception as exc:
        emit({"root": "*", "state": "failed", "error": describe_error(exc)})
        return EXIT_SYSTEM_ERROR
    emit(summary)
    return _bulk_code(summary)


def _svo_sync(args: argparse.Namespace) -> int:
    code, summary = run_sync(dry_run=args.dry_run, update_existing=args.update_existing, config_block=args.config,
                             science_root=args.science_root)
    for line in summary.get("plan", []):
        print(("[dry-run] " if args.dry_run else "") + line)
    emit(summary)
    return code


def _fits_access(args: argparse.Namespace) -> int:
    on = dt.date.fromisoformat(args.on) if args.on else None
    code, summary = check_access(args.oid, args.user, args.group or [], on=on, config_block=args.config)
    emit(summary)
    return code


def _common(p: argparse.ArgumentParser, *, root: bool = True) -> None:
    p.add_argument("--config", default="default", help="block document name (registry, SVO, broker)")
    if root:
        p.add_argument("--science-root", help="science-data root (default $INGEST_HOME/science)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fits", help="ingest one FITS cube (path relative to the science-data root, or inside it)",
                       description="Prints one JSON line {oid, state: ingested|skipped|failed (queued with --queue), "
                                   "work_order, error?}; "
                                   "exit 0 ingested/skipped, 1 bad input, 2 system error.")
    p.add_argument("path", help="cube path, relative to the science-data root or absolute inside it; ends in "
                                ".fits, .fit, .fts, .fz or one of those plus .gz")
    p.add_argument("--oid", help="observation id to use instead of DATE-BEG_FILTER1_scans")
    p.add_argument("--force", action="store_true", help="re-ingest even when the cube is unchanged")
    p.add_argument("--no-previews", action="store_true", help="do not make preview images")
    p.add_argument("--svo", action="store_true", help="submit the cube's record to the SVO")
    p.add_argument("--owner", action="append", default=[], metavar="EMAIL", help="grant access before release")
    p.add_argument("--swedish", action="store_true", help="grant the Swedish user group access before release")
    p.add_argument("--queue", action="store_true",
                   help="only queue a work order (state: queued) for fits-work-orders / the fits-work-orders "
                        "deployment, and return at once")
    _common(p)
    p.set_defaults(handler=_fits)

    w = sub.add_parser("fits-work-orders", help="process the queued FITS work orders now, in bounded batches")
    w.add_argument("--limit", type=int, default=1000, help="at most this many orders (default 1000)")
    w.add_argument("--batch-size", type=int, help="cubes per task run (default 25)")
    _common(w)
    w.set_defaults(handler=_fits_work_orders)

    d = sub.add_parser("fits-dir", help="ingest every FITS file (.fits, .fit, .fts, .fz, .gz of those) under a "
                                        "directory, in bounded batches")
    d.add_argument("root", help="directory, relative to the science-data root or absolute inside it")
    d.add_argument("--force", action="store_true")
    d.add_argument("--no-previews", action="store_true")
    d.add_argument("--svo", action="store_true")
    d.add_argument("--batch-size", type=int, help="cubes per task run (default 25)")
    _common(d)
    d.set_defaults(handler=_fits_dir)

    r = sub.add_parser("fits-reingest", help="re-ingest every recorded cube (reingest_all)")
    r.add_argument("--changed-only", action="store_true", help="skip unchanged cubes instead of forcing")
    r.add_argument("--no-previews", action="store_true")
    r.add_argument("--batch-size", type=int)
    _common(r)
    r.set_defaults(handler=_fits_reingest)

    s = sub.add_parser("svo-sync", help="make the SVO match the archive (delete, submit, optionally update)")
    s.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    s.add_argument("--update-existing", action="store_true", help="also update records both sides have")
    _common(s)
    s.set_defaults(handler=_svo_sync)

    a = sub.add_parser("fits-access", help="may USER download cube OID? exit 0 yes, 1 no",
                       description="Before the release date only granted users and groups have access; from it on, "
                                   "everyone. Prints one JSON line {oid, access, reason, ...}.")
    a.add_argument("oid")
    a.add_argument("--user", required=True, metavar="EMAIL")
    a.add_argument("--group", action="append", metavar="G", help="a group the user belongs to (repeatable)")
    a.add_argument("--on", metavar="YYYY-MM-DD", help="answer for this day (default today)")
    _common(a, root=False)
    a.set_defaults(handler=_fits_access)
