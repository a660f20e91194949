"""Operator helpers around prefect.yaml: one command to deploy, and schedules kept in variables.

``prefect --no-prompt deploy --all`` works on its own (prefect.yaml carries literal default
schedules); ``deploy()`` adds what an operator otherwise does by hand: the work pool, and
re-applying schedules that were changed with ``set_schedule`` (stored as Prefect variables
``schedule_<deployment>`` so a redeploy does not silently revert them).

Self-healing needs three things set in three places, and ``deploy()`` sets all of them:

* **heartbeats in the flow-run process**: ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` in the work pool's
  base job template (``env``), so every deployed run sends ``prefect.flow-run.heartbeat`` whatever
  the worker's own environment says (the CLI turns them off for local runs; a worker started from
  such a shell would otherwise pass that on);
* **zombie detection on the server**: the 3.8.8 server has no built-in one, so an automation
  (``ZOMBIE_AUTOMATION``) expects the next heartbeat within a window and marks the run Crashed;
* **re-running crashed runs**: the ``recover`` deployment's trigger in prefect.yaml, with the
  attempt limit in the Prefect variable ``ingest_max_attempts`` (flows/reconcile/recovery.py).

The pool's flow-run command is ``LAUNCHER`` (deployments/warm_engine.py): under ``python flows/run.py
worker`` it hands each run to a warm runner (a fork, no new interpreter, no imports); anywhere else
it runs ``prefect.engine`` in its own process, as Prefect's default command does.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect.client.schemas.schedules import CronSchedule

ROOT = Path(__file__).resolve().parent.parent
SCHEDULED = {  # deployment name -> flow name, for the ones prefect.yaml schedules
    "apt-scan": "scan-apt-receiving-buckets",
    "svo-sync": "sync-with-svo",
    "ega-inbox": "notify-inbox",
    "fits-work-orders": "process-fits-work-orders",
    "reconcile": "reconcile",
    "fixity": "fixity-audit",
    "archive-status": "archive-status",
}
DEFAULT_HEARTBEAT_SECONDS = 60  # Prefect's floor is 30; its default, 180, leaves a dead worker's run Running 9+ min
ZOMBIE_AUTOMATION = "ingest: crash runs whose heartbeats stopped"
LAUNCHER = "python3 -m deployments.warm_engine"


def variable_name(deployment: str) -> str:
    return "schedule_" + deployment.replace("-", "_")


def ensure_work_pool(name: str = "ingest", pool_type: str = "process",
                     heartbeat_seconds: int | None = DEFAULT_HEARTBEAT_SECONDS,
                     command: str | None = LAUNCHER) -> str:
    """The pool, with heartbeats on in its job template's environment and the warm launcher as its
    flow-run command (both kept across redeploys; ``command=None`` restores Prefect's default)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
            outcome = "exists"
        except ObjectNotFound:
            pool = None
            outcome = "created"
        template = (pool.base_job_template if pool is not None and pool.base_job_template
                    else _default_job_template(pool_type))
        if heartbeat_seconds is not None:
            env = template.setdefault("variables", {}).setdefault("properties", {}).setdefault("env", {})
            defaults = dict(env.get("default") or {})
            defaults["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(int(heartbeat_seconds))
            env["default"] = defaults
        if pool_type == "process":
            template.setdefault("variables", {}).setdefault("properties", {}).setdefault(
                "command", {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Command"})["default"] = command
        if pool is None:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
        else:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return outcome


def _default_job_template(pool_type: str) -> dict[str, Any]:
    if pool_type != "process":
        return {}
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def ensure_zombie_automation(heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS,
                             missed: float = 2.5) -> dict[str, Any]:
    """Mark a run Crashed when its next heartbeat is ``missed`` beats late (Prefect's documented recipe;
    replaced on every deploy so the window follows the heartbeat). The Crashed event then fires
    the ``recover`` deployment's trigger like any other crash."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    within = timedelta(seconds=max(10.0, heartbeat_seconds * missed))
    with get_client(sync_client=True) as client:
        for existing in client.read_automations_by_name(ZOMBIE_AUTOMATION):
            client.delete_automation(existing.id)
    Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"Fires when a running flow run sent a heartbeat and then none for {within.total_seconds():g} s "
                    "(its worker or machine died); marks it Crashed, which the recover deployment re-runs.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {within.total_seconds():g} s: the worker or its "
                                            "machine died")],
    ).create()
    return {"name": ZOMBIE_AUTOMATION, "within_seconds": within.total_seconds()}


def set_schedule(deployment: str, cron: str, timezone: str = "UTC") -> dict[str, Any]:
    """Replace a deployment's schedules with one cron, and remember it for later deploys."""
    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    if deployment not in SCHEDULED:
        raise ValueError(f"{deployment!r} has no schedule; scheduled deployments: {', '.join(SCHEDULED)}")
    schedule = CronSchedule(cron=cron, timezone=timezone)  # validates the expression
    Variable.set(variable_name(deployment), cron, overwrite=True)
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(f"{SCHEDULED[deployment]}/{deployment}")
        for existing in client.read_deployment_schedules(dep.id):
            client.delete_deployment_schedule(dep.id, existing.id)
        client.create_deployment_schedules(dep.id, [(schedule, True)])
    return {"deployment": deployment, "cron": cron, "timezone": timezone}


def deploy(pool: str = "ingest", *, heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS,
           max_attempts: int | None = None) -> dict[str, Any]:
    """Work pool (heartbeats on), ``prefect --no-prompt deploy --all`` (with the recover trigger), the zombie
    automation, the attempt limit, then any schedules kept in variables."""
    from prefect.variables import Variable

    result: dict[str, Any] = {"work_pool": ensure_work_pool(pool, heartbeat_seconds=heartbeat_seconds),
                              "heartbeat_seconds": heartbeat_seconds}
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"prefect deploy failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    result["deployed"] = proc.stdout.count("successfully created")
    result["zombie_automation"] = ensure_zombie_automation(heartbeat_seconds)
    if max_attempts is not None:
        from flows.reconcile.recovery import MAX_ATTEMPTS_VARIABLE

        Variable.set(MAX_ATTEMPTS_VARIABLE, str(int(max_attempts)), overwrite=True)
    result["max_attempts"] = _max_attempts()
    applied = {}
    for deployment in SCHEDULED:
        cron = Variable.get(variable_name(deployment), default=None)
        if cron:
            applied[deployment] = set_schedule(deployment, str(cron))["cron"]
    result["schedules_from_variables"] = applied
    return result


def _max_attempts() -> int:
    from flows.reconcile.recovery import max_attempts

    return max_attempts()
