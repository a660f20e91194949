"""The plain functions behind the audit: durations, budgets, batches, the EGA announcement's shape."""
from __future__ import annotations

from datetime import timedelta

import pytest

from flows.fixity.checks import FAILURE, MISMATCH, Outcome
from flows.fixity.plan import (
    GB,
    Item,
    batches,
    budget_bytes,
    domains_of,
    parse_older_than,
)
from flows.fixity.record import announcement
from tasks.errors import UserError


def test_durations() -> None:
    assert parse_older_than("90d") == timedelta(days=90)
    assert parse_older_than("12h") == timedelta(hours=12)
    assert parse_older_than("0") == timedelta(0)
    assert parse_older_than("2w") == timedelta(days=14)
    with pytest.raises(UserError):
        parse_older_than("ninety days")


def test_budget_and_domains() -> None:
    assert budget_bytes(1.5) == 3 * GB // 2
    with pytest.raises(UserError):
        budget_bytes(0)
    assert domains_of(None) == ["ega", "apt", "fits", "nrao"] and domains_of("fits") == ["fits"]
    with pytest.raises(UserError):
        domains_of("tape")


def test_batches_are_per_domain_and_bounded() -> None:
    items = [Item("ega", f"e{i}", f"e{i}", 1, 10) for i in range(5)] + [Item("apt", "a", "a", 2, 10)]
    got = batches(items, max_items=2)
    assert [[i.item_key for i in b] for b in got] == [["e0", "e1"], ["e2", "e3"], ["e4"], ["a"]]
    assert [len(b) for b in batches(items, max_bytes=25)] == [2, 2, 1, 1]


def test_ega_announcement_is_an_sda_info_error() -> None:
    from flows.ega.sda_messages import InfoError

    item = Item("ega", "ega/EGAF1/x.c4gh", "EGAF1", 7, 100,
                {"user": "jane", "filepath": "x.gpg", "stable_id": "EGAF1", "uri": "file:///v/x.c4gh"})
    outcome = Outcome(item, FAILURE, "vault object", MISMATCH, "checksum mismatch: sha256 a != expected b")
    body = announcement(outcome, "run-1", sda=True)
    parsed = InfoError.model_validate(body)
    assert parsed.error == "fixity mismatch" and "sha256" in parsed.reason
    assert "files.error" not in str(body)
    legacy = announcement(outcome, "run-1")
    assert legacy["original-message"]["stable_id"] == "EGAF1" and legacy["fixity_run"] == "run-1"


def test_ega_broker_setup_gives_fixity_errors_a_queue(monkeypatch) -> None:
    import tasks.notify
    from flows.ega import topology
    from flows.fixity.config import EGA_ERROR_ROUTING_KEY

    declared = {}
    monkeypatch.setattr(tasks.notify, "declare_topology",
                        lambda url, exchanges, queues, bindings: declared.update(queues=queues, bindings=bindings))
    topology.setup("amqp://unused")
    assert ("system-errors", "lega", EGA_ERROR_ROUTING_KEY) in declared["bindings"]
    assert "system-errors" in declared["queues"]
