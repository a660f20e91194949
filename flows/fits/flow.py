"""FITS cube ingest: work order → headers (skip if unchanged) → fixity → describe → registry → previews → SVO.

``ingest_fits_cube`` runs the steps as Prefect tasks, one run per cube. The bulk
flows (``ingest_fits_directory``, ``reingest_all``) queue one work order per file,
``process_work_orders`` drains orders queued by single requests, and all three run
the very same steps as plain calls inside one task per *batch*: a task run costs
milliseconds against the API, and hundreds of cubes must not mean hundreds of task
or flow runs.
"""
from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.fits import records, steps
from flows.fits.steps import CubeRequest, FitsConfig, load_config
from flows.outcome import dated, failure_path, name_run, parameter, run_name
from flows.reporting import ingest_report
from tasks.errors import UserError, is_user_error
from tasks.prefect_support import ingest_task, retry_base

DEFAULT_BATCH_SIZE = 25
BATCH_WORKERS = 2


@dataclass(frozen=True)
class Steps:
    """The steps of one cube, either as Prefect tasks (one run per cube) or as plain calls (inside a batch)."""

    start: Callable
    finish_unchanged: Callable
    verify: Callable
    describe: Callable
    record: Callable
    previews: Callable
    submit_to_svo: Callable
    complete: Callable


PLAIN = Steps(steps.start, steps.finish_unchanged, steps.verify, steps.describe, steps.record,
              steps.make_previews, steps.submit_to_svo, steps.complete)
TASKS = Steps(
    start=ingest_task(steps.start, name="open-order-read-headers"),
    finish_unchanged=ingest_task(steps.finish_unchanged, name="finish-unchanged", retries=5),
    verify=ingest_task(steps.verify, name="verify-checksums"),
    describe=ingest_task(steps.describe, name="describe-cube", retries=1),
    record=ingest_task(steps.record, name="record-in-registry", retries=5),
    previews=ingest_task(steps.make_previews, name="make-previews", retries=1),
    submit_to_svo=ingest_task(steps.submit_to_svo, name="submit-to-svo", retries=1),
    complete=ingest_task(steps.complete, name="complete-work-order", retries=5),
)


def ingest_one(cfg: FitsConfig, request: CubeRequest, run: Steps, flow_run_id: str | None = None) -> dict[str, Any]:
    """The order of the steps for one cube; raises on failure after recording it on the work order.

    An unchanged cube takes two steps (start, finish-unchanged) plus SVO when asked. The steps claim
    the file and its OID (steps.hold); they are released when the cube is done, whatever the outcome.
    """
    timer = steps.Timer()
    order = examined = recorded = checksums = previews = None
    try:
        order, examined = timer("work order + headers", run.start, cfg, request, flow_run_id)
        if examined.skip:
            recorded, previews, row = timer("skip", run.finish_unchanged, cfg, order, examined, request, flow_run_id)
            svo = timer("svo", run.submit_to_svo, cfg, recorded.cube["oid"]) if request.submit_to_svo else None
        else:
            checksums = timer("checksums", run.verify, cfg, order, examined)
            rows = timer("describe", run.describe, cfg, order, request, examined, checksums)
            recorded = timer("record", run.record, cfg, order, rows, flow_run_id)
            previews = (timer("previews", run.previews, cfg, order, recorded, examined.change_key)
                        if request.previews else None)
            svo = timer("svo", run.submit_to_svo, cfg, recorded.cube["oid"]) if request.submit_to_svo else None
            row = timer("complete", run.complete, cfg, order, examined, recorded, skipped=False)
    except BaseException as exc:
        order = order or getattr(exc, "fits_order", None)
        row = steps.fail(cfg, order, recorded.ingest_id if recorded else None, exc)
        exc.fits_summary = steps.result_summary(  # type: ignore[attr-defined]
            state="failed", path=order.path if order else request.relative_path, order_row=row,
            recorded=recorded, examined=examined, checksums=checksums, error=steps.describe_error(exc),
            timings=timer.timings)
        raise
    finally:
        steps.release_claims(cfg)
    return steps.result_summary(state="skipped" if examined.skip else "ingested", path=order.path, order_row=row,
                                recorded=recorded, previews=previews, svo=svo, timings=timer.timings)


def _flow_run_id() -> str | None:
    return str(flow_run.get_id() or "") or None


RESUBMIT = ("Fix the file (or the request) and ingest it again with `python flows/run.py fits PATH`, or let the "
            "next directory ingest pick it up; the failure is recorded on the file's work order.")


def _run_name() -> str:
    """``fits-<file name>`` until the headers give the observation id, then ``fits-<oid>``."""
    return run_name("fits", parameter("oid") or Path(str(parameter("relative_path") or "cube")).name)


@flow(name="ingest-fits-cube", flow_run_name=_run_name,
      description="Ingest one FITS cube: work order, headers, CHECKSUM skip rule, metadata, access, tags, "
                  "previews and (optionally) its SVO record.")
def ingest_fits_cube(relative_path: str, oid: str | None = None, owner_emails: list[str] | None = None,
                     swedish_data: bool = False, force: bool = False, previews: bool = True,
                     submit_to_svo: bool = False, config_block: str = "default",
                     science_root: str | None = None) -> dict[str, Any]:
    request = CubeRequest(relative_path, oid, tuple(owner_emails or ()), swedish_data, force, previews, submit_to_svo)
    cfg = load_config(config_block, science_root=science_root)
    try:
        with failure_path("fits", lambda: relative_path, resubmit=RESUBMIT, describe=steps.describe_error,
                          context=lambda: {"source": relative_path},
                          on_failure=lambda exc, user_error: _failed(cfg, relative_path, exc)):
            summary = ingest_one(cfg, request, TASKS, _flow_run_id())
        if summary.get("oid"):
            name_run(run_name("fits", summary["oid"]))
        steps.notify_status(cfg, summary)
        events = _events(cfg, summary)
        ingest_report("fits", summary["oid"] or relative_path, summary, events=events,
                      context={"source": relative_path}, timings=summary.get("timings"),
                      images=_preview_links(cfg, summary.get("previews")),
                      status="Skipped (unchanged)" if summary.get("state") == "skipped" else "Completed")
        return summary
    finally:
        cfg.close()


def _preview_links(cfg: FitsConfig, previews: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The preview as an image where the UI can load it (the SVO block's public thumbnail URL base),
    else a link to the file."""
    links = []
    for kind in ("image", "thumbnail"):
        path = (previews or {}).get(kind)
        if path:
            url = cfg.svo.thumbnail_url(cfg.preview_root, path) if cfg.svo is not None else None
            links.append((f"{kind} preview", url or Path(path).resolve().as_uri()))
    return links


def _failed(cfg: FitsConfig, relative_path: str, exc: BaseException) -> list[str]:
    """FITS's part of the failure path: the work order already holds the failure (ingest_one); tell
    subscribers. The only thing FITS stages, a gzipped cube's decompressed copy, was removed there."""
    summary = getattr(exc, "fits_summary", None) or steps.result_summary(
        state="failed", path=relative_path, error=steps.describe_error(exc))
    if summary.get("oid"):
        name_run(run_name("fits", summary["oid"]))
    steps.notify_status(cfg, summary)
    return list(getattr(exc, "fits_cleaned", None) or [])


def _events(cfg: FitsConfig, summary: dict[str, Any]) -> list[dict[str, Any]]:
    ingest = cfg.registry.get_ingest(steps.DOMAIN, summary["oid"]) if summary.get("oid") else None
    return cfg.registry.events(ingest.id) if ingest else []


def failure_summary(relative_path: str, exc: BaseException, config_block: str = "default",
                    science_root: str | None = None) -> dict[str, Any]:
    """What the CLI prints for a failed run: the summary the run built, else the reason plus the work order."""
    summary = getattr(exc, "fits_summary", None)
    if summary:
        return summary
    row = None
    path = relative_path
    try:
        cfg = load_config(config_block, science_root=science_root)
        try:
            path, _ = steps.resolve_path(cfg.science_root, relative_path)
            row = records.get_order(cfg.registry, path)
        finally:
            cfg.close()
    except Exception:  # a bad path or an unreachable registry: the reason alone says enough
        row = None
    return steps.result_summary(state="failed", path=path, order_row=row, error=steps.describe_error(exc))


# ---------------------------------------------------------------- bulk: batches of plain calls


def request_from_options(path: str, options: dict[str, Any]) -> CubeRequest:
    """The request a work order's stored options describe (``CubeRequest.options`` in reverse)."""
    return CubeRequest(path, options.get("oid") or None, tuple(options.get("owner_emails") or ()),
                       bool(options.get("swedish_data")), bool(options.get("force")),
                       bool(options.get("previews", True)), bool(options.get("submit_to_svo")))


def ingest_batch(config_block: str, science_root: str | None, paths: list[str], options: dict[str, Any],
                 flow_run_id: str | None = None, retries: int = 2,
                 per_path: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Ingest cubes one after another; one cube's failure is recorded on its order and the batch goes on.

    Transient failures are retried per cube with backoff, so a blip does not re-run the whole batch.
    ``per_path`` overrides ``options`` for a path (queued work orders each carry their own).
    """
    log = steps.run_logger()
    cfg = load_config(config_block, science_root=science_root)
    results: list[dict[str, Any]] = []
    try:
        for path in paths:
            request = request_from_options(path, (per_path or {}).get(path, options))
            for attempt in range(retries + 1):
                try:
                    results.append(ingest_one(cfg, request, PLAIN, flow_run_id))
                    break
                except Exception as exc:
                    user = is_user_error(exc)
                    if user or attempt == retries:
                        summary = getattr(exc, "fits_summary", None) or steps.result_summary(
                            state="failed", path=path, error=steps.describe_error(exc))
                        summary["error_kind"] = "user" if user else "system"
                        log.warning("%s failed: %s", path, summary["error"])
                        results.append(summary)
                        break
                    time.sleep(retry_base() * 2 ** attempt)
                    cfg.registry.close()  # a broken connection reconnects on next use
    finally:
        cfg.close()
    return results


ingest_batch_task = ingest_task(ingest_batch, name="ingest-batch", retries=1)


def _queue(cfg: FitsConfig, paths: list[str], options: dict[str, Any], flow_run_id: str | None) -> int:
    return records.queue_orders(cfg.registry, paths, options, flow_run_id)


queue_work = ingest_task(_queue, name="queue-work-orders")


def _discover(cfg: FitsConfig, root: str) -> tuple[str, list[str]]:
    relative, absolute = steps.resolve_directory(cfg.science_root, root)
    return relative, steps.find_cubes(cfg.science_root, absolute)


discover = ingest_task(_discover, name="find-cubes")


def _known_paths(cfg: FitsConfig) -> list[str]:
    return [r["path"] for r in cfg.registry.execute("SELECT DISTINCT path FROM fits_cubes ORDER BY path")]


known_paths = ingest_task(_known_paths, name="list-known-cubes")


def run_batches(cfg: FitsConfig, paths: list[str], options: dict[str, Any], batch_size: int, config_block: str,
                science_root: str | None) -> tuple[list[dict[str, Any]], int]:
    """Queue one order per path, then ingest in bounded batches (at most BATCH_WORKERS at a time)."""
    if batch_size < 1:
        raise UserError("batch_size must be at least 1")
    run_id = _flow_run_id()
    queue_work(cfg, paths, options, run_id)
    return run_in_batches(paths, batch_size, config_block, science_root, run_id, options)


def run_in_batches(paths: list[str], batch_size: int, config_block: str, science_root: str | None,
                   run_id: str | None, options: dict[str, Any],
                   per_path: dict[str, dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], int]:
    """One ``ingest-batch`` task per ``batch_size`` paths, at most BATCH_WORKERS at a time."""
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    futures = [ingest_batch_task.submit(config_block, science_root, batch, options, run_id,
                                        per_path={path: per_path[path] for path in batch} if per_path else None)
               for batch in batches]
    return [summary for future in futures for summary in future.result()], len(batches)


def bulk_summary(root: str, results: list[dict[str, Any]], batches: int) -> dict[str, Any]:
    counts = {"ingested": 0, "skipped": 0, "failed": 0}
    for r in results:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    system = any(r.get("error_kind") == "system" for r in results)
    return {"root": root, "state": "failed" if counts["failed"] else "completed", "counts": counts,
            "batches": batches, "cubes": len(results), "system_errors": system, "flow_run_id": _flow_run_id(),
            "results": [{k: r.get(k) for k in ("oid", "path", "state", "work_order", "error", "error_kind")
                         if r.get(k) is not None} for r in results]}


def _bulk_report(name: str, summary: dict[str, Any]) -> None:
    table = [{"path": r.get("path"), "oid": r.get("oid"), "state": r.get("state"), "error": r.get("error", "")}
             for r in summary["results"]]
    ingest_report("fits", name, {k: v for k, v in summary.items() if k != "results"}, files=table)


@flow(name="ingest-fits-directory", flow_run_name=dated("fits-dir"), task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS),
      description="Find every FITS file under a directory of the science-data root, queue one work order per file "
                  "and ingest them in bounded batches.")
def ingest_fits_directory(root: str = ".", force: bool = False, previews: bool = True, submit_to_svo: bool = False,
                          owner_emails: list[str] | None = None, swedish_data: bool = False,
                          batch_size: int = DEFAULT_BATCH_SIZE, config_block: str = "default",
                          science_root: str | None = None) -> dict[str, Any]:
    cfg = load_config(config_block, science_root=science_root)
    try:
        relative, paths = discover(cfg, root)
        get_run_logger().info("%d cube(s) under %s; batches of %d", len(paths), relative, batch_size)
        options = {"force": force, "previews": previews, "submit_to_svo": submit_to_svo,
                   "owner_emails": list(owner_emails or ()), "swedish_data": swedish_data}
        results, batches = run_batches(cfg, paths, options, batch_size, config_block, science_root)
        summary = bulk_summary(relative, results, batches)
        steps.notify_status(cfg, summary)
        _bulk_report(f"dir {relative}", summary)
        return summary
    finally:
        cfg.close()


def _claim(cfg: FitsConfig, limit: int, stale_after_s: float, flow_run_id: str | None) -> list[dict[str, Any]]:
    return records.claim_orders(cfg.registry, limit, stale_after_s, flow_run_id)


claim_work = ingest_task(_claim, name="claim-work-orders")


@flow(name="process-fits-work-orders", flow_run_name=dated("fits-work-orders"), task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS),
      description="Drain queued FITS work orders (python flows/run.py fits PATH --queue) in bounded batches: "
                  "many requests share one run, so an unchanged cube costs a header read, not a flow run.")
def process_work_orders(limit: int = 1000, batch_size: int = DEFAULT_BATCH_SIZE, stale_after_minutes: float = 360,
                        config_block: str = "default", science_root: str | None = None) -> dict[str, Any]:
    if limit < 1:
        raise UserError("limit must be at least 1")
    if batch_size < 1:
        raise UserError("batch_size must be at least 1")
    cfg = load_config(config_block, science_root=science_root)
    try:
        run_id = _flow_run_id()
        claimed = claim_work(cfg, limit, stale_after_minutes * 60, run_id)
        per_path = {row["path"]: dict(row["options"] or {}) for row in claimed}
        get_run_logger().info("%d queued work order(s) claimed; batches of %d", len(per_path), batch_size)
        results, batches = run_in_batches(list(per_path), batch_size, config_block, science_root, run_id, {},
                                          per_path)
        summary = bulk_summary("work orders", results, batches)
        if results:
            steps.notify_status(cfg, summary)
            _bulk_report("work-orders", summary)
        return summary
    finally:
        cfg.close()


@flow(name="reingest-all-fits", flow_run_name=dated("fits-reingest"), task_runner=ThreadPoolTaskRunner(max_workers=BATCH_WORKERS),
      description="Re-ingest every recorded cube in bounded batches (force: rebuild metadata even when unchanged).")
def reingest_all(force: bool = True, previews: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                 config_block: str = "default", science_root: str | None = None) -> dict[str, Any]:
    cfg = load_config(config_block, science_root=science_root)
    try:
        paths = known_paths(cfg)
        options = {"force": force, "previews": previews, "submit_to_svo": False}
        results, batches = run_batches(cfg, paths, options, batch_size, config_block, science_root)
        summary = bulk_summary("*", results, batches)
        steps.notify_status(cfg, summary)
        _bulk_report("reingest-all", summary)
        return summary
    finally:
        cfg.close()
