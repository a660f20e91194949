"""APTrust bag ingest: receive → validate → reingest check → staging → PRONOM → store →
verify → record → cleanup, for one work item. One task per stage, never one per file."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows.apt import steps
from flows.apt.config import load_config
from flows.reporting import ingest_report
from tasks.errors import is_user_error
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

STATUS_EXCHANGE = "apt"


def notify_status(config_block: str, work_item_id: int, status: str) -> None:
    """The run's terminal status, once, on exchange ``apt`` (``apt.ingest.<status>``) or the outbox."""
    from blocks.broker import BrokerBlock
    from blocks.register import load_block
    from tasks.notify import Notification, notify

    cfg = load_config(config_block)
    try:
        body = steps.summary(cfg, work_item_id)
    finally:
        cfg.close()
    notify(Notification(exchange=STATUS_EXCHANGE, routing_key=f"apt.ingest.{status}", body=body),
           load_block(BrokerBlock, config_block).transport())


report_status = ingest_task(notify_status, name="notify-status")


@flow(name="ingest-apt-bag",
      description="Ingest one tarred BagIt bag (APTrust 2.2/2.3 or BTR) from a receiving bucket into "
                  "preservation storage, recording objects, files and PREMIS events.")
def ingest_apt_bag(work_item_id: int, config_block: str = "default") -> Any:
    log = get_run_logger()
    cfg = load_config(config_block)
    item = None
    try:
        try:
            item = start(cfg, work_item_id, str(flow_run.get_id() or "") or None)
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
        except BaseException as exc:
            user_error = is_user_error(exc)
            log.error("work item %s failed (%s): %s", work_item_id, "invalid bag" if user_error else "system error",
                      steps.describe_error(exc))
            try:
                steps.fail(cfg, work_item_id, exc, user_error=user_error)
                if user_error and item is not None:
                    # fatal: staging and interim data go, the tar (marked for deletion) leaves receiving
                    steps.cleanup(cfg, item, after_failure=True)
                report_status(config_block, work_item_id, "failed")
            except Exception as report_exc:  # noqa: BLE001 - the original error matters more
                log.error("could not record the failure of work item %s: %s", work_item_id, report_exc)
            raise
        result = steps.summary(cfg, work_item_id)
        report_status(config_block, work_item_id, "success")
        ingest_report("apt", f"{item.identifier}-wi{item.id}", result, events=steps.object_events(cfg, item))
        return result
    finally:
        cfg.close()
