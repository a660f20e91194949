"""How a queue message becomes flow-run parameters, an idempotency key and, if bad, an error reply.

Each deployment fed from a queue has an adapter. Bad input never reaches a flow
run: it is acked and answered on the domain's error channel (for EGA,
``files.error`` to CEGA), so it cannot loop on the queue forever.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

from tasks.errors import UserError
from tasks.notify import Notification, TransportConfig, notify
from tasks.validation import parse_json_message


@dataclass(frozen=True)
class Accepted:
    parameters: dict[str, Any]
    idempotency_key: str
    payload: dict[str, Any]  # what the accepted-message event carries


class Adapter(Protocol):
    def accept(self, body: bytes, correlation_id: str | None) -> Accepted: ...

    def reject(self, body: bytes, correlation_id: str | None, reason: str) -> None: ...

    def answer_completed(self, accepted: Accepted, correlation_id: str | None) -> str | None:
        """A resend of a message whose run already Completed: answer again without redoing work.
        Returns what was sent (for the listener's log line), or None when this queue has no answer."""
        ...


class EgaAdapter:
    """CEGA trigger on ``files`` → ingest-ega-file; invalid → files.error on the cega exchange."""

    def __init__(self, transport: TransportConfig, status_exchange: str = "cega") -> None:
        self.transport = transport
        self.status_exchange = status_exchange

    def accept(self, body: bytes, correlation_id: str | None) -> Accepted:
        from flows.ega.messages import idempotency_key, validate_message

        raw = parse_json_message(body)
        if not isinstance(raw, dict):
            raise UserError("invalid message: the message must be a JSON object")
        msg = validate_message(raw)
        params = {"message": msg.model_dump(exclude_none=True), "correlation_id": correlation_id}
        return Accepted(params, idempotency_key(raw), {"user": msg.user, "filepath": msg.filepath,
                                                       "stable_id": msg.stable_id, "correlation_id": correlation_id})

    def answer_completed(self, accepted: Accepted, correlation_id: str | None) -> str | None:
        """The same files.completed the run sent: CEGA may have lost it, or re-asks on purpose."""
        from flows.ega.messages import EgaMessage, completed_message

        msg = EgaMessage.model_validate(accepted.parameters["message"])
        notify(Notification(exchange=self.status_exchange, routing_key="files.completed",
                            body=completed_message(msg), correlation_id=correlation_id), self.transport)
        return "files.completed"

    def reject(self, body: bytes, correlation_id: str | None, reason: str) -> None:
        try:
            raw = json.loads(body)
        except ValueError:
            raw = {}
        raw = raw if isinstance(raw, dict) else {}
        reply = {"user": raw.get("user"), "filepath": raw.get("filepath"), "stable_id": raw.get("stable_id"),
                 "status": {"state": "ERROR", "details": reason}}
        notify(Notification(exchange=self.status_exchange, routing_key="files.error", body=reply,
                            correlation_id=correlation_id), self.transport)


class JsonAdapter:
    """Any other queue: the JSON object is the parameters (or one named parameter)."""

    def __init__(self, transport: TransportConfig, *, parameter: str | None = None,
                 error_exchange: str = "", error_routing_key: str = "ingest.errors") -> None:
        self.transport = transport
        self.parameter = parameter
        self.error_exchange = error_exchange
        self.error_routing_key = error_routing_key

    def accept(self, body: bytes, correlation_id: str | None) -> Accepted:
        raw = parse_json_message(body)
        if not isinstance(raw, dict):
            raise UserError("invalid message: the message must be a JSON object")
        key = hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
        params = {self.parameter: raw} if self.parameter else raw
        return Accepted(params, f"json:{key}", raw)

    def answer_completed(self, accepted: Accepted, correlation_id: str | None) -> str | None:
        """Generic queues have no completion channel: the completed run is the answer (logged)."""
        return None

    def reject(self, body: bytes, correlation_id: str | None, reason: str) -> None:
        notify(Notification(exchange=self.error_exchange, routing_key=self.error_routing_key,
                            body={"error": reason, "message": body.decode("utf-8", "replace")[:4096]},
                            correlation_id=correlation_id), self.transport)
