"""The home's long-lived local Prefect API, driven through ``python flows/run.py`` as a user runs it.

Each test has its own INGEST_HOME, so each starts its own server (a few seconds); the autouse
fixture in tests/conftest.py stops it afterwards.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deployments import localapi, warm
from tasks import embedded_pg

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.localapi


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(INGEST_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def cli(home: Path, *args: str, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "flows" / "run.py"), *args], cwd=ROOT, env=cli_env(home, **extra),
                          capture_output=True, text=True, timeout=timeout)


def last_json(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return json.loads(lines[-1])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _descendants(roots: set[int], *, not_below: set[int] = frozenset()) -> set[int]:
    """``roots`` and every process below them, without descending into ``not_below``."""
    parents = {int(p): _parent(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    found = set(roots)
    changed = True
    while changed:
        extra = {pid for pid, parent in parents.items()
                 if parent in found and parent not in not_below and pid not in found}
        found |= extra
        changed = bool(extra)
    return found


def home_processes(home: Path) -> set[int]:
    """Every live process that belongs to this home (by command line or environment), with descendants."""
    mark = str(home).encode()
    own = {int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
           and (str(home) in _cmdline(int(p)) or mark in _environ(int(p)))}
    return {pid for pid in _descendants(own) if localapi.pid_alive(pid)}


def shared_processes(home: Path) -> set[int]:
    """What may outlive a CLI call: the shared server, its warm runner (not the runner's forks, which
    are calls) and the embedded database."""
    roots = set()
    state = localapi.read_state(home)
    if state is not None:
        roots.add(state.pid)
    postmaster = embedded_pg.running(home / "pg")
    if postmaster:
        roots.add(postmaster)
    runners = {int(p) for p in os.listdir("/proc") if p.isdigit() and "deployments.warm" in _cmdline(int(p))}
    return _descendants(roots, not_below=runners)


def server_pids(home: Path) -> set[int]:
    return {pid for pid in home_processes(home)
            if localapi.SERVE_MARK in _cmdline(pid) and f"--home {home} " in _cmdline(pid) + " "}


def test_two_concurrent_first_calls_start_exactly_one_server(ingest_home: Path) -> None:
    procs = [subprocess.Popen([sys.executable, str(ROOT / "flows" / "run.py"), "fits-work-orders"], cwd=ROOT,
                              env=cli_env(ingest_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("starting the local Prefect API" in err for _, err in outs) == 1, [err for _, err in outs]
    assert len(server_pids(ingest_home)) == 1
    state = localapi.read_state(ingest_home)
    assert state is not None and server_pids(ingest_home) == {state.pid}
    status = last_json(cli(ingest_home, "server", "status"))
    assert status["running"] and status["pid"] == state.pid and status["url"] == state.url
    assert "embedded PostgreSQL" in status["database"] and status["uptime_seconds"] > 0
    # a later call reuses it, and says nothing about starting
    again = cli(ingest_home, "fits-work-orders")
    assert again.returncode == 0 and "starting the local Prefect API" not in again.stderr
    assert server_pids(ingest_home) == {state.pid}


def wait_for_runner(home: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not warm.sock_path(home).exists():
        time.sleep(0.2)
    assert warm.sock_path(home).exists(), (home / "prefect" / "runner.log").read_text()


def runner_calls(home: Path) -> list[str]:
    return [line for line in (home / "prefect" / "runner.log").read_text().splitlines()
            if " call pid " in line and " exit " not in line and "ending it" not in line]


def assert_only_shared_processes_remain(home: Path, within: float = 10) -> None:
    deadline = time.monotonic() + within  # a killed call's fork gets its grace period to go
    while time.monotonic() < deadline and home_processes(home) - shared_processes(home):
        time.sleep(0.2)
    leftovers = home_processes(home) - shared_processes(home)
    assert not leftovers, {pid: _cmdline(pid) for pid in leftovers}


def test_a_killed_call_leaves_only_the_shared_server(ingest_home: Path) -> None:
    assert cli(ingest_home, "init").returncode == 0
    wait_for_runner(ingest_home)
    # a call that waits forever (for its message on stdin), killed: its fork must go too
    blocked = subprocess.Popen([sys.executable, str(ROOT / "flows" / "run.py"), "ega", "--message", "-"], cwd=ROOT,
                               env=cli_env(ingest_home), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(2)
    assert blocked.poll() is None
    os.kill(blocked.pid, signal.SIGKILL)
    blocked.wait(timeout=10)
    blocked.stdin.close()
    assert_only_shared_processes_remain(ingest_home)
    # a call killed in the middle of its flows
    for delay in (1.0, 2.0):
        proc = subprocess.Popen([sys.executable, str(ROOT / "flows" / "run.py"), "demo"], cwd=ROOT,
                                env=cli_env(ingest_home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert_only_shared_processes_remain(ingest_home)
    done = cli(ingest_home, "demo")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(server_pids(ingest_home)) == 1
    assert len(runner_calls(ingest_home)) == 4  # every call ran in a fork of the warm runner


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)],
                         ids=["SIGINT", "SIGTERM"])
def test_signals_to_the_caller_reach_the_call(ingest_home: Path, signum: int, code: int) -> None:
    """Ctrl-C or a service manager's SIGTERM ends a call in the warm runner as it would one in-process."""
    assert cli(ingest_home, "server", "start").returncode == 0
    wait_for_runner(ingest_home)
    proc = subprocess.Popen([sys.executable, str(ROOT / "flows" / "run.py"), "ega", "--message", "-"], cwd=ROOT,
                            env=cli_env(ingest_home), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not runner_calls(ingest_home):
        time.sleep(0.1)
    assert runner_calls(ingest_home), "the call never reached the runner"
    time.sleep(0.5)
    proc.send_signal(signum)
    assert proc.wait(timeout=20) == code
    proc.stdin.close()
    assert_only_shared_processes_remain(ingest_home, within=2)  # ended by the signal, not by the grace period


def test_a_call_in_the_warm_runner_is_the_same_call(ingest_home: Path, tmp_path: Path) -> None:
    """cwd, environment, stdin, stdout, stderr and the exit code all belong to the caller."""
    assert cli(ingest_home, "init").returncode == 0
    wait_for_runner(ingest_home)
    message = tmp_path / "m.json"
    message.write_text("{not json")
    proc = subprocess.run([sys.executable, str(ROOT / "flows" / "run.py"), "ega", "--message", "-"], cwd=tmp_path,
                          env=cli_env(ingest_home), input="{not json", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "message is not valid JSON" in last_json(proc)["error"]
    proc = subprocess.run([sys.executable, str(ROOT / "flows" / "run.py"), "ega", "--message", "m.json"],
                          cwd=tmp_path, env=cli_env(ingest_home), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "message is not valid JSON" in last_json(proc)["error"]
    missing = cli(ingest_home, "fits", "no/such/cube.fits", PREFECT_LOGGING_LEVEL="WARNING")
    assert missing.returncode == 1 and last_json(missing)["state"] in ("error", "failed", "ERROR"), missing.stdout
    assert len(runner_calls(ingest_home)) == 3


def _artifacts(home: Path, key: str) -> list[dict]:
    state = localapi.read_state(home)
    assert state is not None
    reply = httpx.post(f"{state.url}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}, timeout=10)
    reply.raise_for_status()
    return reply.json()


def test_a_warm_call_is_parsed_in_the_runner_and_answers_before_its_report(ingest_home: Path) -> None:
    """The caller imports none of the CLI's modules (the runner's fork parses the command line); commands
    that must run in the caller still do; the run's report follows the answer, from the same fork."""
    from flows.fits.samples import write_sample_cube
    from flows.reporting import artifact_key

    assert cli(ingest_home, "init").returncode == 0
    wait_for_runner(ingest_home)
    timed = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "flows" / "run.py"), "outbox", "show"],
                           cwd=ROOT, env=cli_env(ingest_home), capture_output=True, text=True, timeout=120)
    assert timed.returncode == 0, timed.stderr[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
    assert "deployments.warm_wire" in imported, sorted(imported)
    assert not {"flows.commands", "prefect", "psycopg", "deployments.localapi"} & imported, sorted(imported)
    calls = len(runner_calls(ingest_home))
    assert calls == 1
    # usage, and a usage error, printed by the fork on the caller's streams
    helped = cli(ingest_home, "--help")
    assert helped.returncode == 0 and "usage: python flows/run.py" in helped.stdout
    wrong = cli(ingest_home, "no-such-command")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr
    # a command that needs no API is handed back, and runs in the caller
    status = cli(ingest_home, "server", "status")
    assert status.returncode == 0 and last_json(status)["running"] is True
    assert len(runner_calls(ingest_home)) == calls + 3
    # a flow run: the caller has its answer, and the run's report follows
    cube = write_sample_cube(ingest_home / "science" / "warm" / "CRISP")
    done = cli(ingest_home, "fits", str(cube.relative_to(ingest_home / "science")))
    assert done.returncode == 0, done.stderr[-3000:]
    oid = last_json(done)["oid"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _artifacts(ingest_home, artifact_key("fits", oid)):
        time.sleep(0.2)
    reports = _artifacts(ingest_home, artifact_key("fits", oid))
    assert len(reports) == 1 and reports[0]["flow_run_id"], reports
    assert_only_shared_processes_remain(ingest_home)
    assert len(runner_calls(ingest_home)) == calls + 4


def test_the_runner_is_stale_when_the_code_changes(tmp_path: Path) -> None:
    for name in warm.SOURCE_DIRS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "m.py").write_text("x = 1\n")
    before = warm.fingerprint(tmp_path)
    assert warm.fingerprint(tmp_path) == before
    later = time.time() + 5
    os.utime(tmp_path / "tasks" / "m.py", (later, later))
    assert warm.fingerprint(tmp_path) != before


def test_a_killed_server_is_replaced(ingest_home: Path) -> None:
    assert cli(ingest_home, "server", "start").returncode == 0
    first = localapi.read_state(ingest_home)
    os.kill(first.pid, signal.SIGKILL)
    time.sleep(0.2)
    proc = cli(ingest_home, "fits-work-orders")
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = localapi.read_state(ingest_home)
    assert second is not None and second.pid != first.pid and server_pids(ingest_home) == {second.pid}
    assert httpx.get(second.url + "/health").status_code == 200


def test_a_hung_server_is_replaced(ingest_home: Path) -> None:
    assert cli(ingest_home, "server", "start").returncode == 0
    first = localapi.read_state(ingest_home)
    os.kill(first.pid, signal.SIGSTOP)  # alive, but answers nothing
    try:
        proc = cli(ingest_home, "fits-work-orders", INGEST_LOCAL_API_ANSWER_TIMEOUT="5")
    finally:
        try:
            os.kill(first.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not answer; replacing it" in proc.stderr
    second = localapi.read_state(ingest_home)
    assert second.pid != first.pid and not localapi.pid_alive(first.pid)


def test_user_api_url_starts_nothing(ingest_home: Path, prefect_api: str) -> None:
    proc = cli(ingest_home, "fits-work-orders", PREFECT_API_URL=prefect_api)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting the local Prefect API" not in proc.stderr
    assert localapi.read_state(ingest_home) is None and not server_pids(ingest_home)
    status = last_json(cli(ingest_home, "server", "status", PREFECT_API_URL=prefect_api))
    assert status["managed"] is False and status["url"] == prefect_api


def test_idle_server_stops_itself_and_server_stop_stops_it(ingest_home: Path) -> None:
    started = last_json(cli(ingest_home, "server", "start", "--idle-minutes", "0.03"))
    assert started["running"] and started["idle_minutes"] == 0.03
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and localapi.pid_alive(started["pid"]):
        time.sleep(0.2)
    assert not localapi.pid_alive(started["pid"]), "an idle server must stop by itself"
    assert localapi.read_state(ingest_home) is None
    deadline = time.monotonic() + 15  # and its embedded database, whose last user it was
    while time.monotonic() < deadline and embedded_pg.running(ingest_home / "pg"):
        time.sleep(0.2)
    assert embedded_pg.running(ingest_home / "pg") is None

    again = last_json(cli(ingest_home, "server", "start"))
    assert embedded_pg.running(ingest_home / "pg")
    stopped = last_json(cli(ingest_home, "server", "stop"))
    assert stopped["stopped"] and stopped["pid"] == again["pid"] and not localapi.pid_alive(again["pid"])
    assert last_json(cli(ingest_home, "server", "status"))["running"] is False
    deadline = time.monotonic() + 15  # SIGTERM too ends in a clean exit that releases the database
    while time.monotonic() < deadline and embedded_pg.running(ingest_home / "pg"):
        time.sleep(0.2)
    assert embedded_pg.running(ingest_home / "pg") is None and embedded_pg.users(ingest_home / "pg") == []


_JOIN_AND_WAIT = """
import sys, time
from pathlib import Path
from tasks import embedded_pg
embedded_pg.join(Path(sys.argv[1]))
print("joined", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_embedded_postgres_stops_after_its_last_user_even_when_one_was_killed(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"

    def user(seconds: float) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _JOIN_AND_WAIT, str(pgdata), str(seconds)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "joined"
        return proc

    killed, survivor = user(120), user(3)
    postmaster = embedded_pg.running(pgdata)
    assert postmaster and set(embedded_pg.users(pgdata)) == {killed.pid, survivor.pid}
    killed.kill()
    killed.wait()
    assert survivor.wait(timeout=60) == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and embedded_pg.running(pgdata):
        time.sleep(0.2)
    assert embedded_pg.running(pgdata) is None, embedded_pg.users(pgdata)
    assert embedded_pg.users(pgdata) == []


def test_a_killed_last_user_is_reaped_and_the_server_stopped(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    proc = subprocess.Popen([sys.executable, "-c", _JOIN_AND_WAIT, str(pgdata), "120"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "joined"
    proc.kill()
    proc.wait()
    assert embedded_pg.running(pgdata) and embedded_pg.users(pgdata) == [proc.pid]
    assert embedded_pg.stop_if_unused(pgdata) is True
    assert embedded_pg.running(pgdata) is None and embedded_pg.users(pgdata) == []


def test_batch_apt_three_bags_one_invalid(ingest_home: Path, tmp_path: Path) -> None:
    from flows.apt.samples import build_bag

    bags = [build_bag(tmp_path, "test.edu.batch_one", title="One"),
            build_bag(tmp_path, "test.edu.batch_bad", title=""),
            build_bag(tmp_path, "test.edu.batch_two", title="Two")]
    proc = cli(ingest_home, "apt", *map(str, bags), "--concurrency", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = {r["bag"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == {b.name for b in bags}
    assert results["test.edu.batch_bad.tar"]["status"] == "Failed"
    assert results["test.edu.batch_bad.tar"]["errors"] == ["In file aptrust-info.txt, required tag Title has no value"]
    assert results["test.edu.batch_one.tar"]["status"] == results["test.edu.batch_two.tar"]["status"] == "Success"
    state = localapi.read_state(ingest_home)
    runs = httpx.post(state.url + "/flow_runs/filter", json={"limit": 50}).json()
    bag_runs = [r for r in runs if r["parameters"].get("work_item_id") is not None]
    assert len(bag_runs) == 3
    assert sorted(r["state_type"] for r in bag_runs) == ["COMPLETED", "COMPLETED", "FAILED"]


def test_batch_ega_one_line_per_message_and_the_worst_exit(ingest_home: Path, tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    missing = tmp_path / "missing.json"
    proc = cli(ingest_home, "ega", "--message", str(bad_json), str(missing), "--concurrency", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["message"] for r in results) == sorted([str(bad_json), str(missing)])
    errors = {r["message"]: r["error"] for r in results}
    assert "not valid JSON" in errors[str(bad_json)] and "cannot read" in errors[str(missing)]
