"""Registry against the real PostgreSQL (scratch database per session)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tasks import registry as reg

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(pg_dsn: str):
    r = reg.Registry(pg_dsn)
    r.migrate()
    yield r
    r.close()


def _schema(r: reg.Registry) -> list[tuple]:
    return [tuple(x.values()) for x in r.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, column_name")]


def test_migrations_apply_once_and_are_recorded(pg_dsn: str) -> None:
    r = reg.Registry(pg_dsn)
    r.migrate()
    before = _schema(r)
    versions = [row["version"] for row in r.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [p.name for p in reg.migration_files()]
    assert r.migrate() == []  # second run applies nothing
    assert _schema(r) == before
    assert len(r.execute("SELECT * FROM schema_migrations")) == len(versions)


def test_ingest_upsert_twice_gives_one_row(registry: reg.Registry, unique: str) -> None:
    a = registry.begin_ingest("test", f"k-{unique}", details={"x": 1})
    b = registry.begin_ingest("test", f"k-{unique}", details={"y": 2})
    assert a.id == b.id
    assert b.attempts == 2 and b.state == "in_ingestion"
    assert b.details == {"x": 1, "y": 2}
    rows = registry.execute("SELECT count(*) AS n FROM ingests WHERE natural_key = %s", (f"k-{unique}",))
    assert rows[0]["n"] == 1
    registry.set_state(a.id, "completed")
    done = registry.get_ingest("test", f"k-{unique}")
    assert done is not None and done.state == "completed"


def test_events_and_files_are_upserts(registry: reg.Registry, unique: str) -> None:
    ingest = registry.begin_ingest("test", f"e-{unique}")
    for _ in range(2):
        registry.record_event(ingest, reg.DIGEST_CALCULATION, subject="f1", discriminator="sha256", detail="abc")
        registry.record_event(ingest, reg.DIGEST_CALCULATION, subject="f1", discriminator="md5")
        registry.upsert_file("test", f"f1-{unique}", ingest_id=ingest.id, vault_uri="file:///v/f1", size=3,
                             checksums={"sha256": "aa"})
    assert len(registry.events(ingest.id)) == 2
    files = registry.files(ingest.id)
    assert len(files) == 1 and files[0]["checksums"] == {"sha256": "aa"}
    registry.upsert_file("test", f"f1-{unique}", ingest_id=ingest.id, vault_uri="file:///v/f1", size=3,
                         checksums={"md5": "bb"})
    assert registry.files(ingest.id)[0]["checksums"] == {"sha256": "aa", "md5": "bb"}


def test_stuck_ingests_are_visible(registry: reg.Registry, unique: str) -> None:
    ingest = registry.begin_ingest("test", f"s-{unique}")
    registry.execute("UPDATE ingests SET updated_at = now() - interval '2 hours' WHERE id = %s", (ingest.id,))
    assert ingest.id in [i.id for i in registry.stuck(timedelta(hours=1))]
    assert ingest.id not in [i.id for i in registry.stuck(timedelta(hours=3))]


def test_embedded_postgres_under_ingest_home(ingest_home, monkeypatch) -> None:
    monkeypatch.delenv("INGEST_REGISTRY_DSN", raising=False)
    r = reg.open_registry()
    try:
        assert (ingest_home / "pg").is_dir()
        assert r.migrate() == []
        assert r.begin_ingest("test", "embedded").attempts == 1
    finally:
        r.close()


def test_review_marks_keep_the_ingest_state_and_the_first_time(registry: reg.Registry, unique: str) -> None:
    ingest = registry.begin_ingest("test", f"review-{unique}")
    registry.set_state(ingest.id, "completed")
    registry.mark_for_review(ingest.id, "fixity mismatch")
    first = registry.for_review("test")
    mine = [r for r in first if r["id"] == ingest.id]
    assert mine and mine[0]["review_reason"] == "fixity mismatch" and mine[0]["state"] == "completed"
    registry.mark_for_review(ingest.id, "missing object")
    again = [r for r in registry.for_review("test") if r["id"] == ingest.id][0]
    assert again["review_reason"] == "missing object" and again["review_at"] == mine[0]["review_at"]
    registry.clear_review(ingest.id)
    assert not [r for r in registry.for_review() if r["id"] == ingest.id]
