"""EGA file ingest: queue message → inbox → checksums → OpenPGP → Crypt4GH → staging → vault → CEGA status."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.ega import steps
from flows.ega.config import load_config
from flows.ega.messages import EgaMessage, validate_message
from flows.outcome import failure_path, parameter, run_name
from flows.reporting import ingest_report
from tasks.errors import UserError, is_user_error
from tasks.prefect_support import ingest_task

register = ingest_task(steps.register, name="register")
locate = ingest_task(steps.locate, name="locate-in-inbox")
fetch_key = ingest_task(steps.fetch_key, name="fetch-key")
reencrypt = ingest_task(steps.reencrypt_to_staging, name="decrypt-reencrypt-stage", retries=2)
archive = ingest_task(steps.archive, name="archive-to-vault")
verify_archived = ingest_task(steps.verify_archived, name="verify-vault-copy")
record = ingest_task(steps.record, name="record-in-registry", retries=5)
report_completed = ingest_task(steps.report_completed, name="report-completed")


RESUBMIT = ("Correct the upload (or its checksums) in the inbox and have CEGA send the ingest message again; "
            "the rejection was sent to CEGA as files.error.")


def _run_name() -> str:
    """``ega-EGAF…``; before an accession exists (SDA), the upload's file name."""
    stable_id = parameter("message", "stable_id")
    return run_name("ega", stable_id or Path(parameter("message", "filepath") or "upload").name)


@flow(name="ingest-ega-file", flow_run_name=_run_name,
      description="Ingest one EGA upload from the inbox into the vault, reporting to CEGA.")
def ingest_ega_file(message: EgaMessage, correlation_id: str | None = None, config_block: str = "default",
                    inbox_root: str | None = None) -> dict[str, Any]:
    log = get_run_logger()
    cfg = load_config(config_block, inbox_root=inbox_root)
    ingest_id = located = staged = None
    try:
        with failure_path("ega", lambda: message.stable_id or message.filepath, resubmit=RESUBMIT,
                          context=lambda: {"submitter": message.user, "source": message.filepath},
                          on_failure=lambda exc, user_error: _failed(cfg, message, correlation_id, exc, user_error,
                                                                     ingest_id, located, staged)):
            message = validate_message(message.model_dump(exclude_none=True))
            ingest_id = register(cfg, message, correlation_id, str(flow_run.get_id() or "") or None)
            located = locate(cfg, message, ingest_id)
            if located.status == "completed" and cfg.vault.exists(located.row["archive_key"]):
                log.info("%s already ingested as %s; reporting the existing result",
                         message.stable_id, located.row["archive_uri"])
                cfg.registry.set_state(ingest_id, "completed")
                row = located.row
            else:
                if located.status == "archived":
                    log.info("resuming %s at the registry step (vault copy already written)", message.stable_id)
                    verify_archived(cfg, located.row)
                else:
                    key = fetch_key(cfg, located)
                    staged = reencrypt(cfg, located, key)
                    archive(cfg, message, located, staged, correlation_id)
                row = record(cfg, message, located, correlation_id)
            report_completed(cfg, message, correlation_id)
        summary = steps.result_summary(message, row, "COMPLETED")
        ingest_report("ega", message.stable_id, summary,
                      context={"submitter": message.user, "source": message.filepath,
                               "size": row.get("upload_size") if row else None},
                      events=cfg.registry.events(ingest_id) if ingest_id else [])
        return summary
    finally:
        cfg.close()


def _failed(cfg: Any, message: EgaMessage, correlation_id: str | None, exc: BaseException, user_error: bool,
            ingest_id: int | None, located: Any, staged: Any) -> list[str]:
    """EGA's part of the failure path: never leave a half-ingested file in staging; tell CEGA."""
    cleaned = []
    if staged is not None:
        cfg.staging.remove(staged.name)
        cleaned.append(f"staged Crypt4GH file {staged.name}")
    steps.report_failure(cfg, message, correlation_id, exc, ingest_id, located, user_error=user_error)
    return cleaned


def failure_summary(message: EgaMessage, exc: BaseException, config_block: str = "default") -> dict[str, Any]:
    """What the CLI prints for a failed run: the reason plus whatever the registry holds."""
    from blocks.register import load_block
    from blocks.registry import RegistryBlock

    reason = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    row = None
    try:
        with load_block(RegistryBlock, config_block).open() as registry:
            rows = registry.execute(
                "SELECT * FROM ega_files WHERE user_name = %s AND filepath = %s ORDER BY updated_at DESC LIMIT 1",
                (message.user, message.filepath))
            row = rows[0] if rows else None
    except Exception:  # the registry itself may be what failed
        row = None
    state = "ERROR" if is_user_error(exc) else "FAILED"
    return steps.result_summary(message, row, state, reason)
