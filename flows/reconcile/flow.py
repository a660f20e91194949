"""Self-healing flows: re-run a crashed ingest run (automation), and reconcile what nothing else will finish."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger

from flows.reconcile import recovery, steps
from tasks.prefect_support import ingest_task


def _load(config_block: str) -> tuple[Any, Any, Any]:
    from blocks.broker import BrokerBlock
    from blocks.register import load_blocks
    from blocks.registry import RegistryBlock
    from blocks.vault import VaultBlock

    broker, registry, vault = load_blocks([BrokerBlock, RegistryBlock, VaultBlock], config_block)
    return broker, registry, vault


def _recover(flow_run_id: str, max_attempts: int | None, config_block: str) -> dict[str, Any]:
    broker, registry_block, _ = _load(config_block)
    with registry_block.open() as registry:
        return recovery.recover(flow_run_id, limit=max_attempts, registry=registry, transport=broker.transport(),
                                internal_exchange=broker.internal_exchange,
                                sda_exchange=broker.sda_exchange).as_dict()


recover_task = ingest_task(_recover, name="recover-crashed-run", retries=3)


@flow(name="recover-crashed-run", flow_run_name="recover-{flow_run_id}",
      description="Started by the automation on every Crashed ingest run: run it again (same flow run) up to "
                  "N attempts, then mark the ingest for review and announce a system error.")
def recover_crashed_run(flow_run_id: str, max_attempts: int | None = None,
                        config_block: str = "default") -> dict[str, Any]:
    result = recover_task(flow_run_id, max_attempts, config_block)
    get_run_logger().info("%s: %s (%s)", result["flow_run_name"], result["action"], result["reason"])
    return result


def _reconcile(dry_run: bool, stuck_after: timedelta, temporaries_after: timedelta, max_attempts: int | None,
               config_block: str, name: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client

    from tasks.home import home_path

    _, registry_block, vault_block = _load(config_block)
    report = steps.Report(dry_run)
    limit = recovery.max_attempts(max_attempts)
    older = temporaries_after.total_seconds()
    with registry_block.open() as registry, get_client(sync_client=True) as client:
        own = None if dry_run else steps.reconcile_ingest(registry, name)  # a dry run writes nothing
        for row in steps.stuck_rows(registry, stuck_after):
            steps.resume_stuck(registry, client, row, limit=limit, dry_run=dry_run, report=report, own=own,
                               stuck_after=stuck_after)
        staging = home_path("staging")
        steps.sweep_staging_files(registry, staging / "ega", "ega", older_than=older, dry_run=dry_run,
                                  report=report, own=own)
        for sub in sorted(p for p in staging.iterdir() if p.is_dir() and p.name != "ega"):
            steps.sweep_staging_files(registry, sub, sub.name, older_than=older, dry_run=dry_run,
                                      report=report, own=own)
        steps.sweep_apt_interim(registry, _apt_staging(config_block, staging), older_than=older,
                                dry_run=dry_run, report=report, own=own)
        steps.sweep_apt_orphan_rows(registry, older_than=older, dry_run=dry_run, report=report, own=own)
        for label, vault in _vaults(config_block, vault_block):
            steps.sweep_vault(registry, vault, older_than=older, dry_run=dry_run, report=report, own=own,
                              domain=label)
        steps.report_orphans(registry, report, own, dry_run)
        if own is not None:
            registry.set_state(own.id, "completed", details={"counts": report.counts()})
    return {"name": name, "dry_run": dry_run, "counts": report.counts(),
            "actions": [a.as_dict() for a in report.actions]}


def _apt_staging(config_block: str, staging: Any) -> Any:
    from pathlib import Path

    try:
        from blocks.apt import AptBlock
        from blocks.register import load_block

        block = load_block(AptBlock, config_block)
        return Path(block.staging_root) if block.staging_root else staging / "apt"
    except Exception:  # noqa: BLE001 - no APT configured
        return staging / "apt"


def _vaults(config_block: str, vault_block: Any) -> list[tuple[str, Any]]:
    """The default vault and every APT storage target, once each."""
    vaults = [("vault", vault_block.vault())]
    try:
        from blocks.apt import AptBlock
        from blocks.register import load_block

        apt = load_block(AptBlock, config_block)
        for option in apt.storage_targets:
            for target in apt.target_names(option):
                vaults.append((f"apt-target {target}", apt.target_vault_block(target).vault()))
    except Exception:  # noqa: BLE001 - no APT targets configured
        pass
    seen, out = set(), []
    for label, vault in vaults:
        if repr(vault) not in seen:
            seen.add(repr(vault))
            out.append((label, vault))
    return out


reconcile_task = ingest_task(_reconcile, name="reconcile", retries=1)


def _name() -> str:
    return "reconcile-" + datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")


@flow(name="reconcile", flow_run_name=_name,
      description="Resume or resubmit ingests left in progress with no live run; remove orphaned temporaries; "
                  "report orphans that cannot be deleted. Every action is a PREMIS event.")
def reconcile(dry_run: bool = False, stuck_after_minutes: float = 120, temporaries_after_minutes: float = 360,
              max_attempts: int | None = None, config_block: str = "default") -> dict[str, Any]:
    from prefect.runtime import flow_run

    name = flow_run.get_name() or _name()
    result = reconcile_task(dry_run, timedelta(minutes=stuck_after_minutes),
                            timedelta(minutes=temporaries_after_minutes), max_attempts, config_block, name)
    get_run_logger().info("%s%s: %s", name, " (dry run)" if dry_run else "", result["counts"] or "nothing to do")
    return result
