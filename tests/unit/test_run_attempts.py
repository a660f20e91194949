"""Joined or created: a run found by its idempotency key is ours only if it holds what we sent."""
from __future__ import annotations

from tasks.run_attempts import _carries, _classify


class _Run:
    def __init__(self, state: str | None) -> None:
        self.state = None if state is None else type("S", (), {"type": type("T", (), {"value": state})()})()


def test_a_run_made_from_another_message_was_joined_even_when_the_server_says_201() -> None:
    stored = {"message": {"stable_id": "EGAF1"}, "correlation_id": "c-0", "config_block": "default"}
    assert _carries(stored, {"message": {"stable_id": "EGAF1"}, "correlation_id": "c-0"})
    assert not _carries(stored, {"message": {"stable_id": "EGAF1"}, "correlation_id": "c-1"})
    assert not _carries(stored, {"message": {"stable_id": "EGAF2"}, "correlation_id": "c-0"})


def test_deployment_defaults_in_the_stored_run_do_not_make_it_someone_elses() -> None:
    assert _carries({"work_item_id": 7, "config_block": "default"}, {"work_item_id": 7})


def test_classification() -> None:
    assert _classify(_Run("COMPLETED"), True) == "completed"
    assert _classify(_Run("CRASHED"), False) is None
    assert _classify(_Run("RUNNING"), False) == "joined"
    assert _classify(_Run(None), True) == "created"
