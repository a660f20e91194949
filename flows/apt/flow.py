"""APTrust bag ingest: receive → validate → reingest check → staging → PRONOM → store →
verify → record → cleanup, for one work item. One task per stage, never one per file."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows.apt import steps
from flows.apt.config import load_config
from flows.outcome import failure_path, name_run, parameter, run_name
from flows.reporting import ingest_report
from tasks.prefect_support import ingest_task

start = ingest_task(steps.start, name="start-work-item")
receive = ingest_task(steps.receive, name="receive-scan-bag")
validate = ingest_task(steps.validate, name="validate-bag")
reingest_check = ingest_task(steps.reingest_check, name="reingest-check")
copy_to_staging = ingest_task(steps.copy_to_staging, name="copy-to-staging")
identify_formats = ingest_task(steps.identify_formats, name="format-identification")
store = ingest_task(steps.store, name="store-preservation-copies")
verify_storage = ingest_task(steps.verify_storage, name="storage-validation")
record = ingest_task(steps.record, name="record-in-registry", retries=5)
cleanup = ingest_task(steps.cleanup, name="cleanup")
finish = ingest_task(steps.finish, name="finish-work-item")

STATUS_EXCHANGE = steps.STATUS_EXCHANGE


def notify_status(config_block: str, work_item_id: int, status: str) -> bool:
    """The run's terminal status on exchange ``apt`` (``apt.ingest.<status>``) or the outbox, once per
    attempt: steps.send_status records what went out, so an "already done" re-run sends it only if the
    run that finished died before telling."""
    from blocks.broker import BrokerBlock
    from blocks.register import load_block

    cfg = load_config(config_block)
    try:
        return steps.send_status(cfg, load_block(BrokerBlock, config_block).transport(), work_item_id, status)
    finally:
        cfg.close()


report_status = ingest_task(notify_status, name="notify-status")


RESUBMIT = ("Fix the bag and upload it again to the receiving bucket under the same name; the next scan "
            "ingests it as a new work item. The errors were sent on the apt exchange (apt.ingest.failed).")


def _run_name() -> str:
    """The name the scan gave the run at creation (``apt-<identifier>``), kept; a run made elsewhere is
    ``apt-wi<id>`` until start-work-item knows the bag and names it ``apt-<identifier>``."""
    from prefect.runtime import flow_run as current

    given = current.name or ""
    return given if given.startswith("apt-") else f"apt-wi{parameter('work_item_id')}"


@flow(name="ingest-apt-bag", flow_run_name=_run_name,
      description="Ingest one tarred BagIt bag (APTrust 2.2/2.3 or BTR) from a receiving bucket into "
                  "preservation storage, recording objects, files and PREMIS events.")
def ingest_apt_bag(work_item_id: int, config_block: str = "default") -> Any:
    log = get_run_logger()
    cfg = load_config(config_block)
    item = None
    try:
        try:
            with failure_path("apt", lambda: item.identifier if item else f"work item {work_item_id}",
                              resubmit=RESUBMIT, describe=steps.describe_error,
                              not_failures=(steps.WorkItemCancelled,),
                              context=lambda: {"institution": item.institution, "source": item.tar_name} if item else {},
                              on_failure=lambda exc, user_error: _failed(cfg, config_block, work_item_id, item, exc,
                                                                         user_error)):
                item = start(cfg, work_item_id, str(flow_run.get_id() or "") or None)
                name_run(run_name("apt", item.identifier))
                if steps.already_done(cfg, item):
                    log.info("work item %s already succeeded; nothing to do", work_item_id)
                    report_status(config_block, work_item_id, "success")
                    return steps.summary(cfg, work_item_id)
                scan = receive(cfg, item)
                validation = validate(cfg, item, scan)
                del scan  # the file list can be large; everything later reads the registry
                reingest = reingest_check(cfg, item, validation)
                copy_to_staging(cfg, item)
                identify_formats(cfg, item)
                store(cfg, item, reingest["storage_option"])
                verify_storage(cfg, item, reingest["storage_option"])
                record(cfg, item, validation, reingest)
                cleanup(cfg, item, delete_tar=cfg.block.delete_after_ingest)
                finish(cfg, item)
        except steps.WorkItemCancelled as exc:
            log.warning("work item %s cancelled: %s", work_item_id, exc)
            steps.cancelled(cfg, work_item_id, exc)
            report_status(config_block, work_item_id, "cancelled")
            return Cancelled(message=str(exc), data=steps.summary(cfg, work_item_id))
        result = steps.summary(cfg, work_item_id)
        report_status(config_block, work_item_id, "success")
        ingest_report("apt", f"{item.identifier}-wi{item.id}", result, events=steps.object_events(cfg, item),
                      context={"institution": item.institution, "source": item.tar_name})
        return result
    finally:
        cfg.close()


def _failed(cfg: Any, config_block: str, work_item_id: int, item: Any, exc: BaseException,
            user_error: bool) -> list[str]:
    """APT's part of the failure path: record the failure; a fatal (user) error also clears staging and
    interim data and marks the tar for deletion from receiving; the one terminal status goes out."""
    steps.fail(cfg, work_item_id, exc, user_error=user_error)
    cleaned = []
    if user_error and item is not None:
        steps.cleanup(cfg, item, after_failure=True)
        cleaned.append(f"staging and interim data of work item {work_item_id}; the tar is marked for deletion "
                       "from receiving")
    report_status(config_block, work_item_id, "failed")
    return cleaned
