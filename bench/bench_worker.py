#!/usr/bin/env python
"""What a deployed EGA ingest costs beyond the flow: publish → Completed on a real stack.

A Prefect server on PostgreSQL, the work pool from `deploy`, one process worker and the
listener, as docs/operations.md sets them up. Each round publishes one CEGA message for an
upload of ``--size`` MiB and waits for `files.completed` (what CEGA, the user, waits for). The
run's state history splits the wait:

  publish → Scheduled   the listener creates the run
  Scheduled → Pending   the worker's poll (PREFECT_WORKER_QUERY_SECONDS)
  Pending → Running     the worker starts the run's process (warm: a launcher that hands the run to
                        a fork of the warm runner; cold: a process that imports Prefect and the flow)
  Running → answered    the flow itself, up to files.completed in CEGA's queue (its last step;
                        Prefect's Completed state follows a moment later)

Workers, side by side on the same stack, one after the other, rounds interleaved (``--workers``):
  warm      python flows/run.py worker          (the documented command: a warm runner beside it)
  cold      python flows/run.py worker --cold   (the pool's launcher runs the engine in-process)
  prefect   prefect worker start, the pool's command reset to Prefect's default (as before #15's fix)
And the tool pipeline for the same upload (bench_cli.EgaSide.tools).
Target (#15): the non-flow part ≤ 5 s on a quiet machine.

    python bench/bench_worker.py --size 8 --repeat 5 [--poll-seconds 2] [--workers warm,prefect]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG = os.environ.get("INGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("INGEST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _db(name: str, drop: bool = False) -> str:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if drop else f'CREATE DATABASE "{name}"')
    return PG.rsplit("/", 1)[0] + "/" + name


def _run(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise SystemExit(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def _wait_reply(stable_id: str, timeout: float = 600) -> float:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            method, _, body = ch.basic_get("completed", auto_ack=True)
            if method is None:
                time.sleep(0.02)
                continue
            if json.loads(body).get("stable_id") == stable_id:
                return time.time()
    finally:
        conn.close()
    raise SystemExit(f"no files.completed for {stable_id} within {timeout} s")


def _history(api: str, stable_id: str, timeout: float = 120) -> dict[str, Any]:
    """When the run first entered each state (waits for Completed: CEGA's answer comes just before it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"ega-{stable_id}"])))[0]
            first: dict[str, Any] = {"id": str(run.id)}
            for s in client.read_flow_run_states(run.id):
                first.setdefault(s.type.value, s.timestamp.timestamp())
            if "COMPLETED" in first or time.monotonic() > deadline:
                return first
            time.sleep(0.2)


WORKERS = {  # how each kind of worker is started, and the pool command it runs with
    "warm": ([sys.executable, "flows/run.py", "worker", "--pool", "ingest"], "launcher"),
    "cold": ([sys.executable, "flows/run.py", "worker", "--pool", "ingest", "--cold"], "launcher"),
    "prefect": ([sys.executable, "-m", "prefect", "worker", "start", "--pool", "ingest"], None),
}


def _tools(side: Any, message: dict) -> float:
    """The tool pipeline's time; gpg-agent on a loaded machine sometimes loses the key: warm it up again."""
    for _ in range(3):
        try:
            return side.tools(message)
        except (SystemExit, subprocess.CalledProcessError):
            (side.work / ".unlocked").unlink(missing_ok=True)
    raise SystemExit("the tool pipeline failed three times")


def _set_pool_command(api: str, launcher: bool) -> None:
    from deployments.ops import LAUNCHER, ensure_work_pool
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        ensure_work_pool("ingest", command=LAUNCHER if launcher else None)


def _start_worker(kind: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start one kind of worker and wait until it polls (and, warm, its runner listens: its log says so),
    so that no kind's figures include its own start."""
    _set_pool_command(env["PREFECT_API_URL"], WORKERS[kind][1] is not None)
    proc = subprocess.Popen(WORKERS[kind][0], cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    marks = ("started!", "warm runner pid") if kind == "warm" else ("started!",)
    while not all(mark in log.read_text() for mark in marks):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the warm runner did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8, help="upload size in MiB (default 8)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="PREFECT_WORKER_QUERY_SECONDS (docs: 2)")
    parser.add_argument("--workers", default="warm,prefect",
                        help="comma-separated, from warm, cold, prefect (default warm,prefect)")
    args = parser.parse_args()
    kinds = [k for k in args.workers.split(",") if k]
    unknown = set(kinds) - set(WORKERS)
    if unknown:
        parser.error(f"unknown workers {sorted(unknown)}; choose from {', '.join(WORKERS)}")

    from bench.bench_cli import EgaSide
    from deployments.localserver import server_env, start_server
    from tests.conftest import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    token = uuid.uuid4().hex[:8]
    prefect_db, registry_db = f"bench_prefect_{token}", f"bench_registry_{token}"
    procs = []
    side = None
    try:
        env = server_env(free_port(), _db(prefect_db), work / "prefect", INGEST_HOME=str(work / "ingest"),
                         PREFECT_WORKER_QUERY_SECONDS=str(args.poll_seconds), PREFECT_LOGGING_LEVEL="WARNING")
        registry = _db(registry_db)
        procs.append(start_server(env, work / "server.log", cwd=ROOT))
        _run(env, sys.executable, "flows/run.py", "init", "--registry-dsn", registry, "--amqp-url", AMQP)
        _run(env, sys.executable, "flows/run.py", "broker", "setup", "--local-cega")
        _run(env, sys.executable, "flows/run.py", "deploy")
        procs.append(subprocess.Popen([sys.executable, "flows/run.py", "listen", "--queue", "files", "--deployment",
                                       "ingest-ega-file/ega"], cwd=ROOT, env=env, stdout=open(work / "listener.log", "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        side = EgaSide(env, work / "ingest", work)
        import pika

        rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        for i in range(args.repeat + 1):  # the first round warms the machine (page cache, pyc)
            for kind in kinds:  # one worker at a time, interleaved, so a load change hits all alike
                log = work / f"worker-{kind}-{i}.log"
                worker = _start_worker(kind, env, log)
                try:
                    _, message = side.upload(args.size)
                    tools = _tools(side, message)
                    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
                    t0 = time.time()
                    conn.channel().basic_publish("", "files", json.dumps(message).encode(),
                                                 pika.BasicProperties(delivery_mode=2))
                    conn.close()
                    answered = _wait_reply(message["stable_id"])
                    h = _history(env["PREFECT_API_URL"], message["stable_id"])
                finally:
                    _stop(worker)
                # CEGA hears files.completed as the flow's last step, just before Prefect's Completed state
                row = {"create": h["SCHEDULED"] - t0, "poll": h["PENDING"] - h["SCHEDULED"],
                       "start+imports": h["RUNNING"] - h["PENDING"], "flow": answered - h["RUNNING"],
                       "answered": answered - t0, "completed": h["COMPLETED"] - t0, "tools": tools}
                row["non-flow"] = h["RUNNING"] - t0
                # a warm round whose runner had gone stale (code edited meanwhile) ran cold: say so, leave it out
                forked = f"flow run {h['id']}" in log.read_text()
                if i and (forked or kind != "warm"):
                    rows[kind].append(row)
                print(json.dumps({"round": i, "worker": kind, **({"forked": forked} if kind == "warm" else {}),
                                  **{k: round(v, 3) for k, v in row.items()}}), flush=True)
        kinds = [kind for kind in kinds if rows[kind]]  # (every warm round ran cold: nothing to show for it)
        med = {kind: {k: statistics.median(r[k] for r in rows[kind]) for k in rows[kind][0]} for kind in kinds}
        print(f"\nEGA {args.size} MiB through a deployment, median of {min(len(r) for r in rows.values())}+ rounds "
              f"(worker poll {args.poll_seconds:g} s), seconds:")
        print(f"  {'':<14}" + "".join(f"{kind:>10}" for kind in kinds))
        for key in ("create", "poll", "start+imports", "flow", "answered", "completed", "non-flow", "tools"):
            print(f"  {key:<14}" + "".join(f"{med[kind][key]:10.2f}" for kind in kinds))
        for kind in kinds:
            print(f"  {kind}: non-flow (publish → flow running) target ≤ 5 s: "
                  f"{'met' if med[kind]['non-flow'] <= 5 else 'NOT met'}; "
                  f"answered / tools = {med[kind]['answered'] / med[kind]['tools']:.2f}")
    finally:
        if side is not None:
            side.close()  # its gpg-agent
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for db in (prefect_db, registry_db):
            try:
                _db(db, drop=True)
            except Exception:  # noqa: BLE001
                pass


if __name__ == "__main__":
    main()
