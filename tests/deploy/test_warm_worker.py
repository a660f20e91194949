"""``python flows/run.py worker``: deployed runs execute in forks of a warm runner, on the real path
(a Prefect server on PostgreSQL, the pool from `deploy`, the documented worker command).

A run completes in a fork whose parent is the runner; a SIGKILLed fork is a Crashed run (which the
recovery automation re-runs); a cancel ends the fork; stopping the worker leaves no process behind."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from deployments.warm_wire import SOURCE_DIRS
from tests.conftest import AMQP_URL
from tests.deploy.conftest import ROOT, Stack, stop
from tests.deploy.test_operations import _channel, _wait
from tests.deploy.test_recovery import (
    MID_PASS_UPLOAD,
    _flow_run_process,
    _run_done,
    _runs,
    _upload,
)

pytestmark = [pytest.mark.integration, pytest.mark.deploy]


def _runner_or_none(worker) -> psutil.Process | None:
    runners = [p for p in psutil.Process(worker.pid).children()
               if "deployments.warm" in " ".join(p.cmdline()) and "--socket" in p.cmdline()]
    assert len(runners) <= 1, [p.cmdline() for p in runners]
    return runners[0] if runners else None


def _runner(worker) -> psutil.Process:
    runner = _runner_or_none(worker)
    assert runner is not None, "no warm runner under the worker command"
    return runner


def _socket(runner: psutil.Process) -> Path:
    args = runner.cmdline()
    return Path(args[args.index("--socket") + 1])


@pytest.fixture(scope="module")
def worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory):
    """The worker command, run from a snapshot of the code, as installed on a worker machine: in this
    shared checkout other work edits files all the time, and the runner rightly calls itself stale
    (runs then start cold) after every edit."""
    stack.run(sys.executable, "flows/run.py", "broker", "setup", "--amqp-url", AMQP_URL)
    # CEGA's side, as its shovel would be: status messages are published mandatory, and are refused
    # unless a queue is bound (this module must not rely on another module's queue being left)
    capture = f"cega-warm-{uuid.uuid4().hex[:8]}"
    conn, ch = _channel()
    ch.queue_declare(capture, durable=True)
    ch.queue_bind(capture, "cega", "#")
    conn.close()
    code = tmp_path_factory.mktemp("installed")
    for name in (*SOURCE_DIRS, "migrations"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, code / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert not stack.live_workers(), [w.args for w in stack.live_workers()]
    proc = stack.start("worker-warm", sys.executable, str(code / "flows" / "run.py"), "worker", "--pool", "ingest",
                       "--limit", "4", extra_env={"PYTHONPATH": str(code)})
    proc.log = stack.logs / f"worker-warm-{len(stack.procs) - 1}.log"
    proc.code = code
    runner = _wait(lambda: _runner_or_none(proc), 60, "the warm runner to start")
    _wait(_socket(runner).exists, 180, "the warm runner to be ready")  # runs before this start cold
    yield proc
    stop(proc)
    conn, ch = _channel()
    ch.queue_delete(capture)
    conn.close()


def _create_run(stack: Stack, message: dict, tag: str):
    with stack.client() as client:
        dep = client.read_deployment_by_name("ingest-ega-file/ega")
        return client.create_flow_run_from_deployment(dep.id, parameters={"message": message, "correlation_id": tag},
                                                      idempotency_key=f"{tag}-{message['stable_id']}")


def _states(stack: Stack, run_id) -> list[str]:
    with stack.client() as client:
        return [s.name for s in client.read_flow_run_states(run_id)]


def _mid_decrypt(stack: Stack, worker, run_id: str):
    staging = stack.ingest_home / "staging" / "ega"
    if not [p for p in staging.glob(".ega-*.part") if p.stat().st_size > (4 << 20)]:
        return None
    return _flow_run_process(worker, run_id)


def test_a_deployed_run_completes_in_a_fork_of_the_warm_runner(stack: Stack, worker) -> None:
    runner = _runner(worker)
    msg = _upload(stack, "warm-user", "small.bin", 1 << 20)
    run = _create_run(stack, msg, "warm-1")
    runs = _wait(lambda: _run_done(stack, msg["stable_id"]), 240, "the run to end")
    assert runs[0].state.is_completed(), runs[0].state
    log = worker.log.read_text()
    # the runner's log (the worker command's output): it forked this run, and the fork exited 0
    fork_lines = [line for line in log.splitlines() if f"flow run {run.id}" in line and "call pid" in line]
    assert len(fork_lines) == 1, log[-3000:]
    pid = fork_lines[0].split("call pid ")[1].split(":")[0]
    # (after Completed, the fork still ships its last logs and events before it exits)
    _wait(lambda: f"call pid {pid} exit 0 after" in worker.log.read_text(), 60, "the fork to exit 0")
    assert runner.is_running() and _runner(worker).pid == runner.pid  # one runner served it, still there


def test_a_sigkilled_fork_is_a_crashed_run_that_is_run_again(stack: Stack, worker) -> None:
    msg = _upload(stack, "warm-user", "kill.bin", MID_PASS_UPLOAD)
    run = _create_run(stack, msg, "warm-kill")
    victim = _wait(lambda: _mid_decrypt(stack, worker, str(run.id)), 240, "the run to be mid-decrypt", 0.05)
    runner = _runner(worker)
    assert victim.ppid() == runner.pid, "the flow run is not a fork of the warm runner"
    assert f"prefect flow run {run.id}" in " ".join(victim.cmdline())
    launcher = next(p for p in psutil.Process(worker.pid).children(recursive=True)
                    if p.pid != victim.pid and p.environ().get("PREFECT__FLOW_RUN_ID") == str(run.id))
    assert "deployments.warm_engine" in " ".join(launcher.cmdline())
    victim.send_signal(signal.SIGKILL)
    _wait(lambda: "Crashed" in _states(stack, run.id), 60, "the run to be Crashed", 0.5)
    assert not launcher.is_running() or launcher.status() == psutil.STATUS_ZOMBIE
    with stack.client() as client:
        crashed = [s for s in client.read_flow_run_states(run.id) if s.name == "Crashed"]
    assert "-9" in (crashed[0].message or "") or "SIGKILL" in (crashed[0].message or ""), crashed[0].message
    runs = _wait(lambda: _run_done(stack, msg["stable_id"]) if _runs(stack, msg["stable_id"])[0].run_count >= 2
                 else None, 420, "the crashed run to be re-run and finish", 1)
    assert runs[0].state.is_completed() and runs[0].run_count == 2, runs[0].state


def test_a_cancel_ends_the_fork(stack: Stack, worker) -> None:
    from prefect.states import Cancelling

    msg = _upload(stack, "warm-user", "cancel.bin", MID_PASS_UPLOAD)
    run = _create_run(stack, msg, "warm-cancel")
    fork = _wait(lambda: _mid_decrypt(stack, worker, str(run.id)), 240, "the run to be mid-decrypt", 0.05)
    assert fork.ppid() == _runner(worker).pid
    with stack.client() as client:
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    _wait(lambda: _runs(stack, msg["stable_id"])[0].state.is_cancelled(), 120, "the run to be Cancelled", 0.5)
    _wait(lambda: not fork.is_running() or fork.status() == psutil.STATUS_ZOMBIE, 30, "the fork to end", 0.2)


def test_after_a_code_change_runs_start_cold_and_a_fresh_runner_takes_over(stack: Stack, worker) -> None:
    old = _runner(worker)
    later = time.time() + 5
    os.utime(worker.code / "tasks" / "__init__.py", (later, later))  # as a deploy of new code would
    msg = _upload(stack, "warm-user", "changed.bin", 1 << 20)
    run = _create_run(stack, msg, "warm-changed")
    runs = _wait(lambda: _run_done(stack, msg["stable_id"]), 240, "the run to end")
    assert runs[0].state.is_completed(), runs[0].state  # ran in its launcher's process: nothing failed
    assert "callers run newer code or another interpreter: exiting" in worker.log.read_text()
    assert f"flow run {run.id}" not in worker.log.read_text()
    _wait(lambda: not old.is_running() or old.status() == psutil.STATUS_ZOMBIE, 30, "the stale runner to exit")
    fresh = _wait(lambda: _runner_or_none(worker), 60, "a fresh runner")
    _wait(_socket(fresh).exists, 180, "the fresh runner to be ready")
    msg = _upload(stack, "warm-user", "fresh.bin", 1 << 20)
    run = _create_run(stack, msg, "warm-fresh")
    assert _wait(lambda: _run_done(stack, msg["stable_id"]), 240, "the run to end")[0].state.is_completed()
    assert f"flow run {run.id}" in worker.log.read_text()  # the fresh runner forked it


def test_stopping_the_worker_command_stops_worker_and_runner(stack: Stack) -> None:
    proc = stack.start("worker-stop", sys.executable, "flows/run.py", "worker", "--pool", "ingest-idle")
    runner = _wait(lambda: _runner_or_none(proc), 60, "the runner")
    sock = _socket(runner)
    _wait(sock.exists, 180, "the runner's socket")
    below = psutil.Process(proc.pid).children(recursive=True)
    assert len(below) >= 2
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0
    print(f"worker command stopped in {time.monotonic() - started:.1f} s")
    _wait(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in below), 30,
          "nothing left behind")
    assert not sock.parent.exists()
