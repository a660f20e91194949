"""EGA file ingest: queue message → inbox → checksums → OpenPGP → Crypt4GH → staging → vault → CEGA status."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.ega import steps
from flows.ega.config import load_config
from flows.ega.messages import EgaMessage, validate_message
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


@flow(name="ingest-ega-file", description="Ingest one EGA upload from the inbox into the vault, reporting to CEGA.")
def ingest_ega_file(message: EgaMessage, correlation_id: str | None = None, config_block: str = "default",
                    inbox_root: str | None = None) -> dict[str, Any]:
    log = get_run_logger()
    cfg = load_config(config_block, inbox_root=inbox_root)
    ingest_id = located = staged = None
    try:
        try:
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
        except BaseException as exc:
            if staged is not None:  # never leave a half-ingested file behind in staging
                cfg.staging.remove(staged.name)
            user_error = is_user_error(exc)
            steps.report_failure(cfg, message, correlation_id, exc, ingest_id, located, user_error=user_error)
            raise
        summary = steps.result_summary(message, row, "COMPLETED")
        ingest_report("ega", message.stable_id, summary,
                      events=cfg.registry.events(ingest_id) if ingest_id else [])
        return summary
    finally:
        cfg.close()


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
