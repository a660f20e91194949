"""APT: ingest a bag through the APT flow, damage one copy of one file and delete one copy of another."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixity.helpers import cli, flip_byte, sql

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def test_every_copy_on_every_target_is_checked(apt_env, apt_corpus, pg_dsn: str) -> None:
    from tasks.notify import pending

    code, summary = apt_env.run(apt_corpus["good_aptrust"].tar)
    assert code == 0, summary
    copies = sql(pg_dsn, "SELECT f.identifier, s.target, s.url FROM apt_files f JOIN apt_storage_records s "
                         "ON s.file_id = f.id ORDER BY f.identifier, s.target")
    files = sorted({c["identifier"] for c in copies})
    assert len(files) >= 3 and {c["target"] for c in copies} == {"standard-or", "standard-va"}

    code, clean = cli("fixity", "--domain", "apt", "--config", apt_env.name)
    assert code == 0, clean
    assert clean["checked"] == len(files) and clean["bytes_read"] == sum(
        Path(c["url"].removeprefix("file://")).stat().st_size for c in copies)  # both copies of every file

    # Damage only the second copy of one file and the first copy of another.
    damaged = next(c for c in copies if c["identifier"] == files[0] and c["target"] == "standard-va")
    removed = next(c for c in copies if c["identifier"] == files[1] and c["target"] == "standard-or")
    flip_byte(Path(damaged["url"].removeprefix("file://")), 0)
    Path(removed["url"].removeprefix("file://")).unlink()

    before = len(pending())
    code, summary = cli("fixity", "--domain", "apt", "--older-than", "0", "--config", apt_env.name)
    assert code == 1, summary
    found = {f["subject"]: f for f in summary["failures"]}
    assert set(found) == {files[0], files[1]}
    assert found[files[0]]["problem"] == "mismatch" and "standard-va" in found[files[0]]["detail"]
    assert found[files[1]]["problem"] == "missing" and "standard-or" in found[files[1]]["detail"]

    failed = sql(pg_dsn, "SELECT subject FROM events WHERE event_type = 'fixity check' AND agent = "
                         "'archive-ingest/fixity' AND outcome = 'failure'")
    assert sorted(e["subject"] for e in failed) == sorted([files[0], files[1]])
    assert len(sql(pg_dsn, "SELECT 1 FROM ingests WHERE domain = 'apt' AND review_reason IS NOT NULL")) == 1

    announced = [(n.exchange, n.routing_key, n.body["subject"]) for n in pending()[before:]]
    assert sorted(announced) == sorted([("apt", "apt.fixity.failed", files[0]), ("apt", "apt.fixity.failed", files[1])])
