"""The SDA (Federated EGA) queue → ``ega-sda-message`` runs.

One adapter for every message CEGA sends a node: ``ingest`` and ``cancel`` triggers and
``accession`` messages, so a listener may consume the node's ``from_cega`` queue directly
(no sda-intercept), or its ``ingest`` and ``accession`` queues (with sda-intercept routing).
An invalid message is acked and answered with ``info-error`` on the node's exchange,
routing key ``error``: SDA has no user-facing reply for a message it cannot read.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from deployments.adapters import Accepted
from tasks.errors import UserError
from tasks.notify import Notification, TransportConfig, notify
from tasks.validation import parse_json_message


def idempotency_key(raw: dict[str, Any], correlation_id: str | None) -> str:
    """Same message → same key. The type is part of it: a cancel is never taken for its upload's trigger."""
    basis = json.dumps({"message": raw, "correlation_id": correlation_id}, sort_keys=True, separators=(",", ":"))
    return f"ega-sda:{raw.get('type')}:" + hashlib.sha256(basis.encode()).hexdigest()[:32]


class SdaAdapter:
    def __init__(self, transport: TransportConfig, exchange: str = "sda") -> None:
        self.transport = transport
        self.exchange = exchange

    def accept(self, body: bytes, correlation_id: str | None) -> Accepted:
        from flows.ega.sda_messages import parse_inbound

        raw = parse_json_message(body)
        if not isinstance(raw, dict):
            raise UserError("invalid message: the message must be a JSON object")
        msg = parse_inbound(raw)
        payload = {"type": raw["type"], "user": msg.user, "filepath": msg.filepath,
                   "accession_id": raw.get("accession_id"), "correlation_id": correlation_id}
        return Accepted({"message": raw, "correlation_id": correlation_id}, idempotency_key(raw, correlation_id),
                        payload)

    def answer_completed(self, accepted: Accepted, correlation_id: str | None) -> str | None:
        """A re-sent accession whose run completed: the same ``ingestion-completion`` again. (An accession
        that found its upload cancelled ends Cancelled, so it never lands here.) A re-sent trigger or
        cancel has nothing to repeat: its run's messages stand."""
        from flows.ega.sda_messages import (
            ROUTE_COMPLETED,
            IngestionAccession,
            IngestionCompletion,
        )

        raw = accepted.parameters["message"]
        if raw.get("type") != "accession":
            return None
        try:
            acc = IngestionAccession.model_validate_json(json.dumps(raw))
            reply = IngestionCompletion(user=acc.user, filepath=acc.filepath, accession_id=acc.accession_id,
                                        decrypted_checksums=acc.decrypted_checksums)
        except ValueError:  # no sha256 in the accession: only the run's own completion can say it
            return None
        notify(Notification(exchange=self.exchange, routing_key=ROUTE_COMPLETED, body=reply.body(),
                            correlation_id=correlation_id), self.transport)
        return "ingestion-completion"

    def reject(self, body: bytes, correlation_id: str | None, reason: str) -> None:
        from flows.ega.sda_messages import ROUTE_ERROR, InfoError

        reply = InfoError(error="invalid message", reason=reason or "invalid message",
                          original_message=body.decode("utf-8", "replace")[:65536])
        notify(Notification(exchange=self.exchange, routing_key=ROUTE_ERROR, body=reply.body(),
                            correlation_id=correlation_id), self.transport)
