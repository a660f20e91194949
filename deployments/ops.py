"""Operator helpers around prefect.yaml: one command to deploy, and schedules kept in variables.

``prefect --no-prompt deploy --all`` works on its own (prefect.yaml carries literal default
schedules); ``deploy()`` adds what an operator otherwise does by hand: the work pool, and
re-applying schedules that were changed with ``set_schedule`` (stored as Prefect variables
``schedule_<deployment>`` so a redeploy does not silently revert them).
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
}


def variable_name(deployment: str) -> str:
    return "schedule_" + deployment.replace("-", "_")


def ensure_work_pool(name: str = "ingest", pool_type: str = "process") -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return "exists"
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
            return "created"


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


def deploy(pool: str = "ingest") -> dict[str, Any]:
    """Work pool, ``prefect --no-prompt deploy --all``, then any schedules kept in variables."""
    from prefect.variables import Variable

    result: dict[str, Any] = {"work_pool": ensure_work_pool(pool)}
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"prefect deploy failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    result["deployed"] = proc.stdout.count("successfully created")
    applied = {}
    for deployment in SCHEDULED:
        cron = Variable.get(variable_name(deployment), default=None)
        if cron:
            applied[deployment] = set_schedule(deployment, str(cron))["cron"]
    result["schedules_from_variables"] = applied
    return result
