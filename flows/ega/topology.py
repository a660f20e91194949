"""LegaMQ: the local broker topology the EGA flows publish to and consume from."""
from __future__ import annotations

EXCHANGES = [("lega", "topic"), ("cega", "topic")]
QUEUES = ["files", "archived", "qc", "errors"]
# `files` is fed by federation from CEGA; `archived` and `qc` are for local subscribers.
BINDINGS = [("archived", "lega", "archived"), ("qc", "lega", "qc"),
            ("errors", "lega", "fixity.error")]  # system errors (flows/fixity): never files.error


def setup(amqp_url: str) -> dict[str, object]:
    from tasks.notify import declare_topology

    declare_topology(amqp_url, EXCHANGES, QUEUES, BINDINGS)
    return {"exchanges": [e for e, _ in EXCHANGES], "queues": QUEUES,
            "bindings": [f"{x} -[{k}]-> {q}" for q, x, k in BINDINGS]}
