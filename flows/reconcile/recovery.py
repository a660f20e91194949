"""Re-running crashed ingest runs, as plain functions (the flows in this package only call them).

Prefect 3.8 never re-runs a Crashed run. An automation created with the deployments
(prefect.yaml, ``recover-crashed-run``) calls ``recover`` for every ingest run that crashes:

* below the attempt limit, the **same** flow run is put back to AwaitingRetry, so a worker runs
  it again; its idempotency key, its name and its history stay one run in the UI, and a resend of
  the message joins it (tasks/run_attempts);
* at the limit, the ingest is marked for review in the registry and announced as a **system**
  error on the domain's channel (legacy EGA: the internal exchange, never ``files.error``, which is
  for the submitter's mistakes; SDA EGA: ``info-error`` on the node's exchange, the SDA message for
  a fault that is not the submitter's).

The run itself must be safe to repeat, which every ingest flow is (the registry says how far it
got; tasks/claims sweeps what the dead attempt left).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from tasks.notify import Notification, notify

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_VARIABLE = "ingest_max_attempts"  # a Prefect variable; `deploy --max-attempts N` sets it
INGEST_TAG = "ingest"
SDA_FLOW = "ega-sda-message"  # flows/ega/sda_flow.py: the run's flow says which protocol its message speaks
DOMAINS = ("ega", "apt", "fits", "nrao")
LIVE = {"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"}

# Where a system error is announced: (exchange from the broker block or literal, routing key).
SYSTEM_ERROR_CHANNELS = {
    "ega": ("internal", "system.error"),  # LegaMQ 'lega'; CEGA's files.error is for user errors only
    "apt": ("apt", "apt.ingest.system_error"),
    "fits": ("fits", "fits.ingest.system_error"),
    "nrao": ("nrao", "nrao.ingest.system_error"),
}


def flow_run_uuid(flow_run_id: str) -> str:
    """Accepts the event's resource id (``prefect.flow-run.<uuid>``) as well as the bare id."""
    return flow_run_id.rsplit(".", 1)[-1].strip()


def max_attempts(explicit: int | None = None) -> int:
    if explicit:
        return int(explicit)
    try:
        from prefect.variables import Variable

        value = Variable.get(MAX_ATTEMPTS_VARIABLE, default=None)
        if value:
            return int(value)
    except Exception as exc:  # noqa: BLE001 - no API, no variable: the default
        log.debug("variable %s not read: %s", MAX_ATTEMPTS_VARIABLE, exc)
    return int(os.environ.get("INGEST_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))


def domain_of(flow_run: Any) -> str | None:
    for tag in flow_run.tags or ():
        if tag in DOMAINS:
            return tag
    return None


@dataclass
class Recovery:
    flow_run_id: str
    flow_run_name: str
    action: str  # rescheduled | review | nothing
    attempts: int
    max_attempts: int
    reason: str
    ingest_id: int | None = None
    announced: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def reschedule(client: Any, flow_run_id: Any, message: str) -> None:
    """Back to AwaitingRetry, now: a worker picks it up like any scheduled run."""
    from prefect.states import AwaitingRetry

    client.set_flow_run_state(flow_run_id, AwaitingRetry(message=message), force=True)


def recover(flow_run_id: str, *, limit: int | None = None, registry: Any = None, transport: Any = None,
            internal_exchange: str = "lega", sda_exchange: str = "sda", client: Any = None) -> Recovery:
    """Decide for one crashed run: run it again, or give it to a person and say so."""
    from prefect.client.orchestration import get_client

    own_client = client is None
    client = client or get_client(sync_client=True)
    try:
        if own_client:
            client.__enter__()
        run = client.read_flow_run(flow_run_uuid(flow_run_id))
        limit = max_attempts(limit)
        state = run.state.type.value if run.state else "UNKNOWN"
        attempts = max(1, run.run_count)
        out = Recovery(str(run.id), run.name, "nothing", attempts, limit, f"state is {state}")
        if state != "CRASHED":  # a duplicate event, or someone already acted on it
            return out
        crash = (run.state.message or "crashed").strip()
        if attempts < limit:
            reschedule(client, run.id, f"re-run {attempts + 1} of {limit} after a crash: {crash}"[:500])
            out.action, out.reason = "rescheduled", f"attempt {attempts} crashed: {crash}"
            log.info("%s (%s) crashed on attempt %d of %d; scheduled again", run.name, run.id, attempts, limit)
            return out
        out.action = "review"
        out.reason = f"crashed {attempts} time(s), the limit is {limit}; last: {crash}"
        if registry is not None:
            out.ingest_id = mark_for_review(registry, str(run.id), out.reason)
        if transport is not None and is_sda(client, run):
            out.announced = announce_sda_info_error(run, out, transport, sda_exchange)
        else:
            out.announced = announce_system_error(run, out, transport, internal_exchange)
        log.warning("%s (%s) crashed %d times: marked for review and announced as a system error",
                    run.name, run.id, attempts)
        return out
    finally:
        if own_client:
            client.__exit__(None, None, None)


def mark_for_review(registry: Any, flow_run_id: str, reason: str) -> int | None:
    rows = registry.execute("SELECT id FROM ingests WHERE flow_run_id = %s ORDER BY updated_at DESC LIMIT 1",
                            (flow_run_id,))
    if not rows:
        return None  # it died before it registered: nothing in the registry to flag
    registry.mark_for_review(rows[0]["id"], reason)
    return rows[0]["id"]


def system_error_body(run: Any, out: Recovery, domain: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"domain": domain, "state": "SYSTEM_ERROR", "reason": out.reason,
                            "attempts": out.attempts, "flow_run_id": out.flow_run_id,
                            "flow_run_name": out.flow_run_name, "ingest_id": out.ingest_id,
                            "needs_review": True}
    message = (run.parameters or {}).get("message")
    if domain == "ega" and isinstance(message, dict):  # what CEGA/operators key on
        body.update({k: message.get(k) for k in ("user", "filepath", "stable_id")})
    return body


def is_sda(client: Any, run: Any) -> bool:
    """Whether a crashed run handled an SDA message. Known from the run itself, not from today's broker
    block: the flow it ran (``ega-sda-message``) fixes the shape of its ``message`` parameter."""
    return domain_of(run) == "ega" and client.read_flow(run.flow_id).name == SDA_FLOW


def sda_info_error(run: Any, out: Recovery) -> dict[str, Any]:
    """``info-error`` (sda/schemas/federated/info-error.json: error, reason, original-message as text).
    The reason says the fault is ours and asks nothing of the submitter."""
    from flows.ega.sda_messages import InfoError

    original = (run.parameters or {}).get("message")
    text = original if isinstance(original, str) else json.dumps(original, sort_keys=True, default=str)
    reason = (f"system error at the archive, not in the upload: the ingest crashed {out.attempts} time(s) "
              f"(the limit is {out.max_attempts}) and is held for the archive's operators; nothing is "
              f"needed from the submitter. Run {out.flow_run_name} ({out.flow_run_id}).")
    return InfoError(error="ingestion failed", reason=reason, original_message=text).body()


def announce_sda_info_error(run: Any, out: Recovery, transport: Any, sda_exchange: str = "sda") -> str:
    from flows.ega.sda_messages import ROUTE_ERROR
    from tasks.notify import PublishRejected

    correlation_id = (run.parameters or {}).get("correlation_id")
    try:
        notify(Notification(exchange=sda_exchange, routing_key=ROUTE_ERROR, body=sda_info_error(run, out),
                            correlation_id=correlation_id if isinstance(correlation_id, str) else None), transport)
    except PublishRejected as exc:  # nobody bound to the node's error key: the review mark stands
        log.warning("info-error for %s not delivered (%s); the registry's review mark stands", run.name, exc)
        return f"{sda_exchange}/{ROUTE_ERROR} info-error (not delivered: {exc})"
    return f"{sda_exchange}/{ROUTE_ERROR} info-error"


def announce_system_error(run: Any, out: Recovery, transport: Any, internal_exchange: str = "lega") -> str | None:
    domain = domain_of(run)
    if transport is None or domain is None:
        return None
    exchange, routing_key = SYSTEM_ERROR_CHANNELS[domain]
    exchange = internal_exchange if exchange == "internal" else exchange
    correlation_id = (run.parameters or {}).get("correlation_id")
    from tasks.notify import PublishRejected

    try:
        notify(Notification(exchange=exchange, routing_key=routing_key, body=system_error_body(run, out, domain),
                            correlation_id=correlation_id if isinstance(correlation_id, str) else None), transport)
    except PublishRejected as exc:  # nobody subscribed: the review mark is the durable record
        log.warning("system error for %s not delivered (%s); the registry's review mark stands", run.name, exc)
        return f"{exchange}/{routing_key} (not delivered: {exc})"
    return f"{exchange}/{routing_key}"
