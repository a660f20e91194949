"""The byte budget: a run stops at it and the next run resumes behind it, oldest check first."""
from __future__ import annotations

import pytest

from tests.fixity.helpers import cli, sql

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def test_budget_of_two_objects_three_runs_cover_six_none_twice(ega_env, gpg, pg_dsn: str) -> None:
    from flows.ega.cli import run_message
    from tests.ega.test_ega_flow import submit

    stable_ids = []
    for i in range(6):  # equal plaintext sizes: equal Crypt4GH sizes
        msg, _ = submit(ega_env, gpg, bytes([i]) * 30_000, "--compress-algo", "none", name=f"b{i}.bin")
        code, summary = run_message(msg, config_block=ega_env.name)
        assert code == 0, summary
        stable_ids.append(summary["stable_id"])
    sizes = {r["archive_size"] for r in sql(pg_dsn, "SELECT archive_size FROM ega_files")}
    assert len(sizes) == 1
    budget = f"{2.5 * sizes.pop() / 1e9:.12f}"  # room for two objects, not three

    code, dry = cli("fixity", "--domain", "ega", "--max-gb", budget, "--dry-run", "--config", ega_env.name)
    assert code == 0 and dry["planned"] == 2 and dry["due"] == 6 and dry["remaining"] == 4
    assert sql(pg_dsn, "SELECT count(*) AS n FROM fixity_checks")[0]["n"] == 0  # a dry run records nothing

    seen: list[str] = []
    for run in range(3):
        code, summary = cli("fixity", "--domain", "ega", "--max-gb", budget, "--config", ega_env.name)
        assert code == 0, summary
        assert summary["checked"] == 2 and summary["remaining"] == 4 - 2 * run
        seen += [s["subject"] for s in sql(
            pg_dsn, "SELECT subject FROM fixity_checks WHERE last_run = %s", summary["run"])]
    assert sorted(seen) == sorted(stable_ids)  # all six, none twice

    code, summary = cli("fixity", "--domain", "ega", "--max-gb", budget, "--config", ega_env.name)
    assert code == 0 and summary["checked"] == 0 and summary["due"] == 0  # nothing due for 90 days
    # Safe to run twice at once: a run skips an archive another run is auditing.
    from flows.fixity.steps import lock_domains
    from tasks.registry import Registry

    with Registry(pg_dsn) as other:
        assert lock_domains(other, ["ega"]) == (["ega"], [])
        code, summary = cli("fixity", "--domain", "ega", "--older-than", "0", "--config", ega_env.name)
        assert code == 0 and summary["skipped_domains"] == ["ega"] and summary["checked"] == 0
    code, summary = cli("fixity", "--domain", "ega", "--older-than", "0", "--max-gb", budget,
                        "--config", ega_env.name)
    assert summary["checked"] == 2 and summary["domains"] == ["ega"]  # released with the other connection

    checks = sql(pg_dsn, "SELECT checks FROM fixity_checks")
    assert sorted(c["checks"] for c in checks) == [1] * 4 + [2] * 2
    runs = sql(pg_dsn, "SELECT checked, state FROM fixity_runs ORDER BY started_at")
    assert [(r["checked"], r["state"]) for r in runs] == [(2, "completed")] * 3 + [(0, "completed")] * 2 + [
        (2, "completed")]
