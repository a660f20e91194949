"""``python flows/run.py apt BAG.tar`` (one bag end to end) and ``apt-scan`` (one bucket scan)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flows.cli_common import add_concurrency, emit, local_run, run_batch

EXIT_COMPLETED, EXIT_USER_ERROR, EXIT_SYSTEM_ERROR = 0, 1, 2


def _outcome(state: Any) -> tuple[int, str | None]:
    """Exit code and error text of a finished ingest run."""
    from tasks.errors import UserError, is_user_error

    if state.is_completed():
        return EXIT_COMPLETED, None
    if state.is_cancelled():
        return EXIT_SYSTEM_ERROR, state.message or "cancelled"
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        reason = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        return (EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR), reason
    return EXIT_SYSTEM_ERROR, state.message or state.type.value


def choose_work_item(cfg: Any, obj: Any) -> tuple[str, int | None, str]:
    """("run" | "done" | "refused" | "wait", work item id, why) for a bag just put in receiving.

    An unfinished or system-failed item of this very upload is resumed (a killed run, a fixed
    outage); a succeeded one with its object still active is reported, not repeated; anything
    else goes through the scanner's rules, except that an invalid bag submitted again gets a
    fresh work item (the scanner would skip it), so the CLI always answers with the errors.
    """
    from flows.apt import records
    from flows.apt.names import parse_bag_name
    from flows.apt.scan import INGEST, REFUSE, consider

    bag = parse_bag_name(obj.key, obj.institution)
    latest = records.latest_work_item(cfg.registry, obj.institution, bag.name, obj.etag, tar_name=obj.key)
    if latest is not None:
        status = latest["status"]
        if status in records.UNFINISHED or (status == records.FAILED and latest["error_kind"] == "system"):
            return "run", latest["id"], f"resuming work item {latest['id']} ({status} at {latest['stage']})"
        if status == records.SUCCESS:
            found = records.get_object(cfg.registry, latest["object_identifier"])
            if found is not None and found["state"] == "A":
                return "done", latest["id"], f"already ingested by work item {latest['id']}"
        if status == records.FAILED and latest["error_kind"] == "user":
            row = records.create_work_item(cfg.registry, institution=obj.institution, bag_name=bag.name,
                                           tar_name=obj.key, etag=obj.etag, bucket=obj.bucket, object_key=obj.key,
                                           size=obj.size, note="Queued: submitted again from the command line")
            return "run", row["id"], "submitted again"
    decision = consider(cfg, obj)
    if decision.action == INGEST:
        return "run", decision.work_item_id, decision.reason
    if decision.action == REFUSE:
        return "refused", decision.work_item_id, decision.reason
    return "wait", decision.work_item_id, decision.reason


def run_bag(tar: str | Path, *, institution: str | None = None, config_block: str = "default",
            via_scan: bool = False) -> tuple[int, dict[str, Any]]:
    """Put the tar into the institution's receiving area and ingest it; (exit code, summary)."""
    from flows.apt import records, steps
    from flows.apt.config import load_config
    from flows.apt.flow import ingest_apt_bag
    from flows.apt.names import parse_bag_name
    from flows.apt.scan import scan_receiving_buckets
    from tasks.errors import UserError

    tar = Path(tar)
    try:
        if not tar.is_file():
            raise UserError(f"{tar} is not a file")
        bag = parse_bag_name(tar.name, institution)
        if not tar.name.endswith(".tar"):
            raise UserError(f"'{tar.name}' is not a tarred bag (*.tar)")
        if not bag.institution:
            raise UserError(f"cannot tell the institution from '{tar.name}': pass --institution")
    except UserError as exc:
        return EXIT_USER_ERROR, {"bag": tar.name, "status": None, "stage": None, "errors": [exc.message],
                                 "object": None, "file_count": 0, "events": {}}
    cfg = load_config(config_block)
    try:
        obj = cfg.receiving.put(bag.institution, tar)
        if via_scan:
            with local_run():
                scan_receiving_buckets(config_block=config_block, institutions=[bag.institution])
            row = records.latest_work_item(cfg.registry, bag.institution, bag.name, obj.etag, tar_name=obj.key)
            if row is None:
                return EXIT_SYSTEM_ERROR, {"bag": tar.name, "status": None, "errors": ["the scan queued nothing"]}
            out = steps.summary(cfg, row["id"])
            code = {"Success": EXIT_COMPLETED, "Failed": EXIT_USER_ERROR if row["error_kind"] == "user"
                    else EXIT_SYSTEM_ERROR}.get(out["status"], EXIT_SYSTEM_ERROR)
            return code, out
        action, work_item_id, why = choose_work_item(cfg, obj)
        if action == "done":
            current = cfg.receiving.stat(obj.bucket, obj.key)
            if current is not None and current.etag == obj.etag:
                cfg.receiving.delete(obj.bucket, obj.key)  # we just put it there; nothing will ingest it
            row = records.get_work_item(cfg.registry, work_item_id)
            if steps.status_never_sent(row):  # the run died between finishing and telling: tell now
                from blocks.broker import BrokerBlock
                from blocks.register import load_block

                steps.send_status(cfg, load_block(BrokerBlock, config_block).transport(), work_item_id, "success")
                why += "; its status message had never been sent and was sent now"
            return EXIT_COMPLETED, {**steps.summary(cfg, work_item_id), "message": why}
        if action == "refused":
            return EXIT_USER_ERROR, {**steps.summary(cfg, work_item_id), "errors": [why]}
        if action == "wait":
            return EXIT_SYSTEM_ERROR, {"bag": tar.name, "status": None, "stage": None, "errors": [why],
                                       "object": None, "file_count": 0, "events": {}}
        with local_run():
            state = ingest_apt_bag(work_item_id=work_item_id, config_block=config_block, return_state=True)
        code, error = _outcome(state)
        out = steps.summary(cfg, work_item_id)
        if error and code == EXIT_SYSTEM_ERROR:
            out["error"] = error
        elif error and not out["errors"]:
            out["errors"] = [error]
        return code, out
    finally:
        cfg.close()


def run_scan(*, config_block: str = "default", institutions: list[str] | None = None) -> dict[str, Any]:
    from flows.apt.scan import scan_receiving_buckets

    with local_run():
        return scan_receiving_buckets(config_block=config_block, institutions=institutions or None)


def _apt(args: argparse.Namespace) -> int:
    def one(bag: str) -> tuple[int, dict[str, Any]]:
        return run_bag(bag, institution=args.institution, config_block=args.config, via_scan=args.scan)

    if len(args.bag) == 1:
        code, summary = one(args.bag[0])
        emit(summary)
        return code
    return run_batch(args.bag, one, concurrency=args.concurrency,
                     describe=lambda bag: {"bag": Path(bag).name, "status": None, "errors": []})


def _apt_scan(args: argparse.Namespace) -> int:
    result = run_scan(config_block=args.config, institutions=args.institution)
    emit(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apt", help="ingest tarred APTrust/BTR bags end to end",
                       description="Puts each BAG.tar into the institution's receiving area, ingests it in its own "
                                   "flow run, and prints one JSON line per bag {stage, status, errors, object, "
                                   "file_count, events, ...}; exit 0 success, 1 invalid bag, 2 system error (the "
                                   "worst of them). Running it again resumes an interrupted ingest of the same file.")
    p.add_argument("bag", nargs="+", help="tar file(s) (name: <institution>.<bag>.tar, or pass --institution)")
    add_concurrency(p)
    p.add_argument("--institution", help="institution domain, e.g. test.edu (default: from the bag name)")
    p.add_argument("--scan", action="store_true", help="go through the receiving-bucket scanner instead")
    p.add_argument("--config", default="default", help="block document name (APT, registry)")
    p.set_defaults(handler=_apt)

    s = sub.add_parser("apt-scan", help="scan the APT receiving buckets once and ingest what is new")
    s.add_argument("--institution", action="append", help="only this institution (repeatable)")
    s.add_argument("--config", default="default")
    s.set_defaults(handler=_apt_scan)
