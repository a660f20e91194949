"""NRAO product ingest (the Ingest Envoy): stage → manifest + artifacts → NGAS → registry → notify."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.nrao import records, steps
from flows.nrao.steps import NraoRequest, load_config
from flows.outcome import failure_path, name_run, parameter, run_name
from flows.reporting import ingest_report
from tasks.errors import is_user_error
from tasks.prefect_support import ingest_task

register = ingest_task(steps.register, name="register")
stage = ingest_task(steps.stage, name="stage-products", retries=1)
check_recorded = ingest_task(steps.check_recorded, name="check-registry")
prepare = ingest_task(steps.prepare, name="write-manifest-and-artifacts", retries=1)
archive = ingest_task(steps.archive, name="archive-to-ngas")
record = ingest_task(steps.record, name="record-in-registry", retries=5)
report_completed = ingest_task(steps.report_completed, name="notify-completed")


RESUBMIT = ("Fix the product (or the request's locator and kind) and submit the request again; the failure "
            "was announced on the configured transport.")


def _run_name() -> str:
    """``nrao-calibration-<source>`` until the product's locator is known, then ``nrao-calibration-<locator>``."""
    kind = parameter("request", "kind")
    kind = getattr(kind, "value", kind) or "product"
    return run_name(f"nrao-{kind}", Path(str(parameter("request", "source") or "request")).name)


@flow(name="ingest-nrao-product", flow_run_name=_run_name,
      description="Stage an NRAO calibration, image, observation or SECI product, archive it in NGAS "
                  "(CRC checked) and record it in the registry.")
def ingest_nrao_product(request: NraoRequest, config_block: str = "default",
                        ngas_url: str | None = None) -> dict[str, Any]:
    log = get_run_logger()
    cfg = load_config(config_block, ngas_url=ngas_url)
    ingest_id = staged = plan = None
    recorded = False
    try:
        with failure_path("nrao", lambda: f"{request.kind.value} {request.source}", resubmit=RESUBMIT,
                          describe=steps.describe_error,
                          context=lambda: {"kind": request.kind.value, "source": request.source,
                                           "input locator": request.input_locator},
                          on_failure=lambda exc, user_error: _failed(cfg, request, ingest_id, staged, recorded, exc,
                                                                     user_error)):
            if not request.dry_run:
                ingest_id = register(cfg, request, str(flow_run.get_id() or "") or None)
            staged = stage(cfg, request)
            try:
                known = check_recorded(cfg, request, staged)
            except records.AlreadyRecorded as refused:
                if request.dry_run or not steps.completion_unsent(cfg, ingest_id, refused):
                    raise
                known = None  # an earlier run recorded this very request, then died before announcing it
            if known is None:
                log.info("%s: recorded by an earlier run that never announced it; announcing it now", staged.source)
                summary = steps.recorded_summary(cfg, request, staged)
                recorded = True
            else:
                plan = prepare(cfg, request, staged, known)
                if plan.science:
                    name_run(run_name(f"nrao-{request.kind.value}", plan.science[0].locator))
                if request.dry_run:
                    summary = steps.result_summary(request, "DRY_RUN", staged=staged, plan=plan)
                    log.info("dry run: %d file(s) would be archived to NGAS; manifest at %s", len(plan.items),
                             summary["manifest"])
                    ingest_report("nrao", f"dry-run {steps.natural_key(request, staged.source)}", summary,
                                  files=summary["plan"], status="Dry run")
                    return summary
                archived = archive(cfg, plan, steps.ArchiveProgress())
                record(cfg, request, ingest_id, staged, plan, archived)
                recorded = True
                summary = steps.result_summary(request, "COMPLETED", staged=staged, plan=plan, archived=archived,
                                               ngas_url=cfg.ngas_url)
            report_completed(cfg, request, summary, ingest_id)
        steps.cleanup(staged)
        log.info("NRAO %s ingest of %s completed: %s", request.kind.value, staged.source,
                 ", ".join(p["locator"] for p in summary["products"]))
        ingest_report("nrao", steps.natural_key(request, staged.source), summary,
                      context={"kind": request.kind.value, "source": staged.source},
                      events=steps.ingest_events(cfg, ingest_id), files=summary["files"])
        return summary
    finally:
        cfg.close()


def _failed(cfg: Any, request: NraoRequest, ingest_id: int | None, staged: Any, recorded: bool,
            exc: BaseException, user_error: bool) -> list[str]:
    """NRAO's part of the failure path. Once recorded, the product is in and only the completion notice
    failed: a "failed" notice would then be false. Before that, subscribers hear of the failure once."""
    if not recorded:
        steps.report_failure(cfg, request, ingest_id, steps.describe_error(exc), user_error=user_error,
                             notify_status=not request.dry_run, exc=exc)
    if staged is None:
        return []
    steps.cleanup(staged)
    return [f"staging directory {staged.product.staging_dir}"]


def failure_summary(request: NraoRequest, exc: BaseException) -> dict[str, Any]:
    """What the CLI prints for a failed run."""
    state = "ERROR" if is_user_error(exc) else "FAILED"
    return steps.result_summary(request, state, error=steps.describe_error(exc))
