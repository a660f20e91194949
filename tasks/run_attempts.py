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


async def _create(client: Any, deployment_id: Any, parameters: dict[str, Any], key: str,
                  name: str | None = None) -> tuple[Any, bool]:
    """``create_flow_run_from_deployment``, keeping what the client drops: the server answers 201 when it
    created the run and 200 when the key returned an existing one (joined, for the log line)."""
    from prefect.client.schemas.actions import DeploymentFlowRunCreate
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Scheduled, to_state_create

    payload = DeploymentFlowRunCreate(parameters=parameters, state=to_state_create(Scheduled()),
                                      idempotency_key=key, **({"name": name} if name else {}))
    response = await client.request("POST", "/deployments/{id}/create_flow_run", path_params={"id": deployment_id},
                                    json=payload.model_dump(mode="json", exclude_unset=True))
    flow_run = FlowRun.model_validate(response.json())
    return flow_run, response.status_code == 201 and _carries(flow_run.parameters or {}, payload.parameters)


def _carries(stored: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Whether the run holds what this request sent. The server's 201 alone is no proof that this request
    made the run: it compares the run's creation time with the request's start, so two creates racing
    on one key can both get 201. A run made from another message (another correlation id) was joined."""
    import json

    sent = json.loads(json.dumps(sent, default=str))
    return all(stored.get(k) == v for k, v in sent.items())


async def submit_attempt(client: Any, deployment_id: Any, parameters: dict[str, Any], base_key: str,
                         name: str | None = None) -> Submission:
    """Create (or find) the run of the current attempt of ``base_key`` on the deployment (``name``: the
    run's name from creation on; None: Prefect picks one until the flow names it)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        key = attempt_key(base_key, attempt)
        flow_run, fresh = await _create(client, deployment_id, parameters, key, name)
        outcome = _classify(flow_run, fresh)
        if outcome is not None:
            return Submission(flow_run, attempt, outcome, key)
    raise RuntimeError(f"{base_key}: more than {MAX_ATTEMPTS} attempts ended badly")


def submit_attempt_sync(deployment_name: str, parameters: dict[str, Any], base_key: str) -> Submission:
    """The same for synchronous callers (a scan flow): resolves the deployment by name."""
    from prefect.client.orchestration import get_client
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def go() -> Submission:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(deployment_name)
            return await submit_attempt(client, deployment.id, parameters, base_key)

    return run_coro_as_sync(go())
