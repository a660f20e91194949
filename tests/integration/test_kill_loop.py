"""Issue 13's kill loop, its fast subset: one SIGKILL per domain at its most dangerous step, as a user
runs the CLI, then the same command again; each must end with one stored copy, one terminal answer and
no leftovers (bench/kill_loop.py does every step of every domain; its figures are in the issue)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import failpoints

ROOT = Path(__file__).resolve().parents[2]


def test_failpoint_specs_parse_and_reject_nonsense() -> None:
    assert failpoints.parse("archive-to-vault:kill, store-preservation-copies:kill-after=0.25") == {
        "archive-to-vault": ("kill", 0.0), "store-preservation-copies": ("kill-after", 0.25)}
    assert failpoints.parse("") == {}
    for bad in ("archive-to-vault", "archive-to-vault:explode", ":kill"):
        with pytest.raises(ValueError):
            failpoints.parse(bad)


def test_the_failpoint_kills_its_process_at_that_step_only(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    code = ("from tasks import failpoints\n"
            "failpoints.at_task_start('register')\n"
            "print('past register', flush=True)\n"
            "failpoints.at_task_start('archive-to-vault')\n"
            "print('past archive', flush=True)\n")
    env = {**os.environ, "INGEST_FAILPOINT": "archive-to-vault:kill", "INGEST_FAILPOINT_TRACE": str(trace)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == -9 and proc.stdout == "past register\n", (proc.returncode, proc.stdout, proc.stderr)
    assert [line.split()[1] for line in trace.read_text().splitlines()] == ["register", "archive-to-vault"]


@pytest.mark.localapi
def test_one_kill_per_domain_at_its_most_dangerous_step_heals_by_running_the_command_again() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "INGEST_"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "kill_loop.py"), "--quick",
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"results"')]
    assert lines, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    results = json.loads(lines[-1])["results"]
    assert sorted(r["domain"] for r in results) == ["apt", "ega", "fits", "nrao"], proc.stdout
    for r in results:
        assert r["recovered_by"] != "not killed", r
        assert r["ok"], (r, proc.stdout[-3000:])
        copies, expected = r["copies"].split("/")
        assert copies == expected and int(expected) >= 1 and r["answers"] == 1 and r["leftovers"] == [], r
    assert proc.returncode == 0, proc.stdout[-3000:]
