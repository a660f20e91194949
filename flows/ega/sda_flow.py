"""EGA over the SDA (Federated EGA) protocol: one flow run per message from CEGA.

``type: ingest`` archives and verifies the upload and ends awaiting an accession;
``type: accession`` is a short run that completes it under that id; ``type: cancel``
calls off whatever of that upload is not yet completed and never starts an ingest.
The order of steps for each lives here; the steps are in ``sda_steps``.
"""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows.ega import sda_steps, steps
from flows.ega.config import EgaConfig, load_config
from flows.ega.sda_messages import IngestionAccession, IngestionTrigger, parse_inbound
from flows.outcome import failure_path, parameter, run_name
from flows.reporting import ingest_report
from tasks.prefect_support import ingest_task

register = ingest_task(sda_steps.register, name="register")
locate = ingest_task(sda_steps.locate, name="locate-in-inbox")
fetch_key = ingest_task(steps.fetch_key, name="fetch-key")
reencrypt = ingest_task(sda_steps.reencrypt_to_staging, name="decrypt-reencrypt-stage", retries=2)
archive = ingest_task(sda_steps.archive, name="archive-to-vault")
request_accession = ingest_task(sda_steps.request_accession, name="request-accession")
cancel = ingest_task(sda_steps.cancel, name="cancel-ingest")
finalize = ingest_task(sda_steps.finalize, name="complete-with-accession", retries=5)


RESUBMIT = ("Correct the upload (or its checksums) in the inbox and have CEGA send the ingest message again; "
            "the rejection was sent to CEGA as ingestion-user-error.")
RESUBMIT_ACCESSION = ("Nothing is needed from the submitter: CEGA's message could not be applied, and CEGA was told "
                      "in an info-error. A corrected accession message completes the ingest.")


def _run_name() -> str:
    """``ega-EGAF…`` for an accession; ``ega-<file>`` for an ingest; ``ega-cancel-<file>`` for a cancel."""
    kind = parameter("message", "type")
    if kind == "accession" and parameter("message", "accession_id"):
        return run_name("ega", str(parameter("message", "accession_id")))
    name = PurePosixPath(str(parameter("message", "filepath") or "upload")).name
    return run_name("ega-cancel" if kind == "cancel" else "ega", name)


def received_time(received_at: datetime | None) -> datetime:
    """When the message was received: the run's creation (the listener creates it on receipt). Not its
    scheduled start, which a recovered run (AwaitingRetry) moves past a cancel that came in between."""
    from prefect.context import FlowRunContext

    if received_at is not None:
        return received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)
    ctx = FlowRunContext.get()
    created = getattr(getattr(ctx, "flow_run", None), "created", None)
    return datetime.fromisoformat(created.isoformat()) if created else datetime.now(UTC)


@flow(name="ega-sda-message", flow_run_name=_run_name,
      description="One SDA (Federated EGA) message from CEGA: ingest (ends awaiting accession), accession "
                  "(completes the ingest under that id) or cancel (undoes it).")
def handle_sda_message(message: dict[str, Any], correlation_id: str | None = None, config_block: str = "default",
                       inbox_root: str | None = None, received_at: datetime | None = None) -> Any:
    cfg = load_config(config_block, inbox_root=inbox_root)
    try:
        with failure_path("ega", lambda: str(message.get("filepath") or "message"), resubmit=RESUBMIT,
                          context=lambda: {"submitter": message.get("user"), "source": message.get("filepath")},
                          on_failure=lambda exc, _user_error: sda_steps.report_failure(
                              cfg, message, correlation_id, exc, None, None, user_error=False)):
            parsed = parse_inbound(message)
        when = received_time(received_at)
        if isinstance(parsed, IngestionAccession):
            return _accession(cfg, parsed, message, correlation_id)
        if parsed.type == "cancel":
            return _cancel(cfg, parsed, message, correlation_id, when)
        return _ingest(cfg, parsed, message, correlation_id, when)
    finally:
        cfg.close()


def _ingest(cfg: EgaConfig, trig: IngestionTrigger, raw: dict[str, Any], correlation_id: str | None,
            when: datetime) -> Any:
    log = get_run_logger()
    ingest_id = located = staged = None

    def failed(exc: BaseException, user_error: bool) -> list[str]:
        cleaned = []
        if staged is not None:
            cfg.staging.remove(staged.name)
            cleaned.append(f"staged Crypt4GH file {staged.name}")
        sda_steps.report_failure(cfg, raw, correlation_id, exc, ingest_id, located, user_error=user_error)
        return cleaned

    try:
        with failure_path("ega", lambda: trig.filepath, resubmit=RESUBMIT, on_failure=failed,
                          context=lambda: {"submitter": trig.user, "source": trig.filepath},
                          not_failures=(sda_steps.Cancelled,)):
            ingest_id = register(cfg, trig, correlation_id, str(flow_run.get_id() or "") or None)
            located = locate(cfg, trig, ingest_id, when)
            if located.status == "completed":
                log.info("%s/%s already archived as %s; completion sent again", trig.user, trig.filepath,
                         located.row["stable_id"])
                cfg.registry.set_state(ingest_id, "completed")
                sda_steps.report_completed(cfg, located.row, correlation_id)
                return _report(sda_steps.summary(located.row, "COMPLETED"), ingest_id, cfg)
            if located.status == "awaiting_accession":
                log.info("%s/%s already verified; accession requested again", trig.user, trig.filepath)
                row = located.row
            else:
                key = fetch_key(cfg, located)
                staged = reencrypt(cfg, located, key, when)
                sda_steps.check_not_cancelled(cfg, located, when, "before archiving")
                row = archive(cfg, located, staged, when)
                staged = None  # moved into the vault
            request_accession(cfg, row, correlation_id)
            log.info("%s/%s archived as file id %s at %s (sha256 %s); awaiting accession", trig.user, trig.filepath,
                     row["sda_file_id"], row["archive_uri"], row["archive_checksum"])
            return _report(sda_steps.summary(row, "AWAITING_ACCESSION"), ingest_id, cfg)
    except sda_steps.Cancelled as exc:
        # The run ends Cancelled (not Failed, not Completed): a later trigger of the same upload is a new attempt.
        sda_steps.undo_cancelled(cfg, located, staged, str(exc))
        log.info("%s; nothing left in staging or the vault", exc)
        _report(sda_steps.summary(None, "CANCELLED", user=trig.user, filepath=trig.filepath, error=str(exc)),
                ingest_id, cfg, status="Cancelled")
        return Cancelled(message=str(exc))


def _cancel(cfg: EgaConfig, trig: IngestionTrigger, raw: dict[str, Any], correlation_id: str | None,
            when: datetime) -> dict[str, Any]:
    with failure_path("ega", lambda: trig.filepath, resubmit=RESUBMIT,
                      context=lambda: {"submitter": trig.user, "source": trig.filepath},
                      on_failure=lambda exc, _user_error: sda_steps.report_failure(
                          cfg, raw, correlation_id, exc, None, None, user_error=False)):
        result = cancel(cfg, trig, correlation_id, when)
    for run_id in result.pop("ingest_runs", []):
        _mark_undone(run_id, f"cancelled by CEGA: {trig.user}/{trig.filepath}")
    get_run_logger().info("cancel of %s/%s: %s", trig.user, trig.filepath, result["state"])
    return result


def _mark_undone(flow_run_id: str, message: str) -> None:
    """An ingest run that had Completed (awaiting accession) and is now undone shows Cancelled, so the UI
    tells the truth and a re-sent trigger of that upload starts a new attempt. A live run is left to
    stop itself at its next step (killing it would strand its staged file)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_completed():
                client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - the registry already records the cancel; the UI is secondary
        get_run_logger().warning("could not mark run %s cancelled: %s", flow_run_id, exc)


def _accession(cfg: EgaConfig, acc: IngestionAccession, raw: dict[str, Any], correlation_id: str | None) -> Any:
    with failure_path("ega", lambda: acc.accession_id, resubmit=RESUBMIT_ACCESSION,
                      context=lambda: {"submitter": acc.user, "source": acc.filepath},
                      on_failure=lambda exc, user_error: sda_steps.report_failure(
                          cfg, raw, correlation_id, exc, None, None, user_error=user_error)):
        done = finalize(cfg, acc, correlation_id)
    if done.get("state") == "CANCELLED":  # ends Cancelled: a re-sent accession is never answered as completed
        get_run_logger().info("%s", done["error"])
        return Cancelled(message=done["error"])
    get_run_logger().info("%s completed: %s/%s at %s", acc.accession_id, acc.user, acc.filepath, done["archive_uri"])
    return _report(sda_steps.summary(done, "COMPLETED"), done["ingest_id"], cfg)


def _report(summary: dict[str, Any], ingest_id: int | None, cfg: EgaConfig, *,
            status: str = "Completed") -> dict[str, Any]:
    name = summary.get("stable_id") or summary.get("file_id") or f"{summary.get('user')}/{summary.get('filepath')}"
    ingest_report("ega", name, summary, events=cfg.registry.events(ingest_id) if ingest_id else [], status=status,
                  context={"submitter": summary.get("user"), "source": summary.get("filepath"),
                           "protocol": "SDA (Federated EGA)"})
    return summary
