"""Queue → run throughput: the listener against sequential ``run_deployment`` calls, one run.

    python bench/bench_listener.py --messages 400

Starts its own Prefect server on a scratch PostgreSQL database, deploys the EGA deployment,
then (peer) creates runs with sequential ``run_deployment(timeout=0, idempotency_key=k)``
and (ours) drains a RabbitMQ queue with ``python flows/run.py listen``. No worker runs, so
this measures run creation only. Prints runs/s and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployments.localserver import server_env, start_server  # noqa: E402

PG = os.environ.get("INGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("INGEST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


def count_runs(env: dict[str, str], prefix: str) -> int:
    code = ("import sys\nfrom prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    n=0; off=0\n"
            "    while True:\n"
            "        page=c.read_flow_runs(limit=200, offset=off); off+=200\n"
            "        n+=sum(1 for r in page if str(r.parameters.get('message',{}).get('stable_id','')).startswith(sys.argv[1]))\n"
            "        if len(page)<200: break\n"
            "print(n)\n")
    return int(subprocess.run([sys.executable, "-c", code, prefix], env=env, capture_output=True, text=True,
                              check=True).stdout)


def messages(prefix: str, n: int) -> list[dict]:
    return [{"user": "bench", "filepath": f"b{i}.gpg", "stable_id": f"{prefix}{i:05d}",
             "encrypted_integrity": {"checksum": "0" * 32, "algorithm": "md5"}} for i in range(n)]


def peer(env: dict[str, str], prefix: str, n: int) -> float:
    code = ("import sys, json, time\nfrom prefect.deployments import run_deployment\n"
            "from flows.ega.messages import idempotency_key\n"
            "msgs=json.load(sys.stdin); t=time.perf_counter()\n"
            "for m in msgs: run_deployment('ingest-ega-file/ega', parameters={'message': m}, timeout=0,"
            " idempotency_key=idempotency_key(m), as_subflow=False)\n"
            "print(time.perf_counter()-t)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, input=json.dumps(messages(prefix, n)),
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def ours(env: dict[str, str], prefix: str, n: int, concurrency: int, logs: Path) -> float:
    queue = f"bench-files-{prefix}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    for m in messages(prefix, n):
        ch.basic_publish("", queue, json.dumps(m).encode(), pika.BasicProperties(delivery_mode=2))
    listener = subprocess.Popen([sys.executable, "flows/run.py", "listen", "--queue", queue, "--adapter", "ega",
                                 "--deployment", "ingest-ega-file/ega", "--amqp-url", AMQP, "--concurrency",
                                 str(concurrency), "--no-events"], env=env, cwd=ROOT,
                                stdout=open(logs / "listener.log", "w"), stderr=subprocess.STDOUT)
    t0 = None
    while True:
        depth = ch.queue_declare(queue, passive=True).method.message_count
        if t0 is None and depth < n:
            t0 = time.perf_counter()  # first message taken: the listener is up
        if t0 is not None and depth == 0 and count_runs(env, prefix) >= n:
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    listener.send_signal(signal.SIGTERM)
    listener.wait(60)
    ch.queue_delete(queue)
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--peer-messages", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-listener-"))
    db = f"bench_listener_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{db}"')
    env = server_env(_free_port(), PG.rsplit("/", 1)[0] + "/" + db, work / "prefect",
                     PREFECT_LOGGING_LEVEL="WARNING", INGEST_HOME=str(work / "ingest"), PYTHONPATH=str(ROOT))
    server = start_server(env, work / "server.log", cwd=ROOT)
    try:
        subprocess.run([sys.executable, "-m", "prefect", "work-pool", "create", "ingest", "--type", "process"],
                       env=env, cwd=ROOT, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "-n", "ega"], env=env, cwd=ROOT,
                       check=True, capture_output=True)
        p = peer(env, "PEER" + uuid.uuid4().hex[:6], args.peer_messages)
        o = ours(env, "OURS" + uuid.uuid4().hex[:6], args.messages, args.concurrency, work)
        peer_rate, our_rate = args.peer_messages / p, args.messages / o
        print("## queue → flow runs (run creation only, server on PostgreSQL, 2 cores shared)")
        print(f"{'contender':52} {'runs':>6} {'seconds':>9} {'runs/s':>8}")
        print(f"{'sequential run_deployment(timeout=0, idempotency_key)':52} {args.peer_messages:6d} {p:9.2f} {peer_rate:8.1f}")
        print(f"{f'listener, concurrency {args.concurrency}':52} {args.messages:6d} {o:9.2f} {our_rate:8.1f}")
        print(f"ratio: {our_rate / peer_rate:.2f}x; {1000 * p / args.peer_messages:.0f} ms per sequential call")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
