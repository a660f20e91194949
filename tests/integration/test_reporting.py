"""The run summary artifact operators read in the Prefect UI."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.prefect]


def test_report_of_a_long_history_shows_the_latest_events_only(prefect_api, unique: str) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.reporting import MAX_REPORTED_EVENTS, artifact_key, ingest_report

    events = [{"occurred_at": f"2026-01-01T00:00:{i:03d}", "event_type": "ingestion", "subject": "c",
               "outcome": "skipped", "detail": f"run {i}"} for i in range(MAX_REPORTED_EVENTS + 70)]

    @flow
    def report() -> None:
        ingest_report("fits", f"cube-{unique}", {"state": "skipped"}, events=events)

    report()
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key("fits", f"cube-{unique}")])))
    text = found[-1].data
    assert f"The latest {MAX_REPORTED_EVENTS} of {len(events)}" in text
    rows = [line for line in text.splitlines() if line.startswith("| 2026-")]
    assert len(rows) == MAX_REPORTED_EVENTS
    assert f"run {len(events) - 1} |" in rows[-1] and "run 69 |" not in text and "run 70 |" in rows[0]
