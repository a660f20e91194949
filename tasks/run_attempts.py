"""Resends are attempts, not duplicates: one flow run per attempt of one object.

Prefect returns the existing run for a repeated idempotency key even when that run failed, so
a bare key swallows a resend after a failure. Here the key carries an attempt number (the first
attempt keeps the bare key, so runs created before this existed are still found):

* the attempt's run is Scheduled, Pending, Running (or Paused, Cancelling) → **joined**: nothing new starts;
* it Completed → **completed**: the caller answers again with the recorded result, no work is redone;
* it Failed, Crashed or Cancelled → the next attempt's key is tried, until one is live, completed or new.

Two resends at once walk the same keys and meet on the same new run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_ATTEMPTS = 1000  # a guard against a loop, not a policy: each step needs a run that ended badly
ENDED_BADLY = {"FAILED", "CRASHED", "CANCELLED"}


def attempt_key(base: str, attempt: int) -> str:
    return base if attempt <= 1 else f"{base}#attempt-{attempt}"


@dataclass(frozen=True)
class Submission:
    flow_run: Any  # prefect FlowRun
    attempt: int
    outcome: str  # "created" | "joined" | "completed"
    idempotency_key: str

    @property
    def flow_run_id(self) -> str:
        return str(self.flow_run.id)


def _classify(flow_run: Any, fresh: bool) -> str | None:
    state = flow_run.state.type.value if flow_run.state is not None else "SCHEDULED"
    if state == "COMPLETED":
        return "completed"
    if state in ENDED_BADLY:
        return None
    return "created" if fresh else "joined"


async def submit_attempt(client: Any, deployment_id: Any, parameters: dict[str, Any], base_key: str,
                         **create_options: Any) -> Submission:
    """Create (or find) the run of the current attempt of ``base_key`` on the deployment."""
    from datetime import datetime, timedelta, timezone

    from prefect.states import Scheduled

    for attempt in range(1, MAX_ATTEMPTS + 1):
        key = attempt_key(base_key, attempt)
        asked = datetime.now(timezone.utc) - timedelta(seconds=2)  # clock skew to the server: wording only
        flow_run = await client.create_flow_run_from_deployment(
            deployment_id, parameters=parameters, state=Scheduled(), idempotency_key=key, **create_options)
        fresh = flow_run.created is not None and flow_run.created >= asked
        outcome = _classify(flow_run, fresh)
        if outcome is not None:
            return Submission(flow_run, attempt, outcome, key)
    raise RuntimeError(f"{base_key}: more than {MAX_ATTEMPTS} attempts ended badly")


def submit_attempt_sync(deployment_name: str, parameters: dict[str, Any], base_key: str,
                        **create_options: Any) -> Submission:
    """The same for synchronous callers (a scan flow): resolves the deployment by name."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def go() -> Submission:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(deployment_name)
            return await submit_attempt(client, deployment.id, parameters, base_key, **create_options)

    return run_coro_as_sync(go())
