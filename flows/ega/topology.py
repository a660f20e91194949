"""LegaMQ: the local broker topology the EGA flows publish to and consume from.

``cega`` is left unbound on purpose: at a connected site the shovel to Central EGA binds it
(docs/ega.md). Until then a status message has no queue, and our publisher (mandatory
publishing) fails the ingest rather than drop it. A site without a CEGA connection asks
for ``local_cega``: local queues on ``cega`` that keep what CEGA would have received.
"""
from __future__ import annotations

EXCHANGES = [("lega", "topic"), ("cega", "topic")]
QUEUES = ["files", "archived", "qc", "system-errors"]
# `files` is fed by federation from CEGA; `archived` and `qc` are for local subscribers; `system-errors`
# keeps system errors that are nobody's upload (a failed fixity check: fixity.error, flows/fixity) and
# ingests that crashed past the attempt limit (system.error, flows/reconcile/recovery.py).
BINDINGS = [("archived", "lega", "archived"), ("qc", "lega", "qc")]
# Without CEGA: queue <- cega [routing key]. `processing` as well, or files.processing (the first
# message of every ingest) would be unroutable.
LOCAL_CEGA = [("completed", "files.completed"), ("errors", "files.error"), ("inbox", "files.inbox"),
              ("inbox.checksums", "files.inbox.checksums"), ("processing", "files.processing")]

# An SDA node (neicnordic/sensitive-data-archive rabbitmq/definitions.json), the part our flows use:
# the exchange `sda`; CEGA's messages arrive on `from_cega` (federated from CEGA's `to_fega`) or, with
# sda-intercept running, on `ingest` and `accession`; what we publish goes to `sda` by routing key.
SDA_QUEUES = ["from_cega", "ingest", "accession", "archived", "verified", "inbox", "completed_stream",
              "error_stream"]
SDA_BINDINGS = [("ingest", "ingest"), ("accession", "accession"), ("archived", "archived"),
                ("verified", "verified"), ("inbox", "inbox"), ("completed_stream", "completed"),
                ("error_stream", "error")]


def setup(amqp_url: str, *, local_cega: bool = False, status_exchange: str = "cega",
          internal_exchange: str = "lega", queue_prefix: str = "") -> dict[str, object]:
    """Declare the legacy topology (idempotent); names can be moved aside (tests use a prefix)."""
    from tasks.notify import declare_topology

    q = lambda name: queue_prefix + name
    exchanges = [(internal_exchange, "topic"), (status_exchange, "topic")]
    queues = [q(name) for name in QUEUES]
    bindings = [(q("archived"), internal_exchange, "archived"), (q("qc"), internal_exchange, "qc"),
                (q("system-errors"), internal_exchange, "fixity.error"),
                (q("system-errors"), internal_exchange, "system.error")]  # an ingest out of re-runs (reconcile)
    if local_cega:
        queues += [q(name) for name, _ in LOCAL_CEGA]
        bindings += [(q(name), status_exchange, key) for name, key in LOCAL_CEGA]
    declare_topology(amqp_url, exchanges, queues, bindings)
    out: dict[str, object] = {"exchanges": [e for e, _ in exchanges], "queues": queues,
                              "bindings": [f"{x} -[{k}]-> {name}" for name, x, k in bindings]}
    if not local_cega:
        out["note"] = (f"exchange {status_exchange!r} has no queue: status messages are refused until the shovel "
                       "to Central EGA binds it (docs/ega.md), or run again with --local-cega")
    return out


def setup_sda(amqp_url: str, *, exchange: str = "sda", queue_prefix: str = "") -> dict[str, object]:
    """The node's own topology, for a local SDA-mode broker (a real node already has it)."""
    from tasks.notify import declare_topology

    queues = [queue_prefix + name for name in SDA_QUEUES]
    bindings = [(queue_prefix + name, exchange, key) for name, key in SDA_BINDINGS]
    declare_topology(amqp_url, [(exchange, "topic")], queues, bindings)
    return {"exchanges": [exchange], "queues": queues,
            "bindings": [f"{x} -[{k}]-> {name}" for name, x, k in bindings]}
