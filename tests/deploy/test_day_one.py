"""An operator's day one, step by step as docs/operations.md says, and the UI they then look at.

Server on PostgreSQL with the settings `server-settings` prints (PREFECT_UI_API_URL among them),
`init` with an S3 vault whose bucket does not exist yet, `broker setup --local-cega`, `deploy`, a
process worker and the listener. The first EGA message must complete with nothing done outside
the docs; then headless Chromium loads the UI and reads the run names and reports.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pika
import psycopg
import pytest

from tests.conftest import AMQP_URL, PG_ADMIN_DSN, free_port
from tests.deploy.test_operations import _wait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.deploy]


def _run(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _exports(text: str) -> dict[str, str]:
    return dict(line[len("export "):].split("=", 1) for line in text.splitlines() if line.startswith("export "))


@dataclass
class DayOne:
    ui: str
    api: str
    bucket: str
    s3_endpoint: str
    completed: dict
    failed: dict
    env: dict


def _drain(queue: str) -> list[tuple[str, dict]]:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch, out = conn.channel(), []
    try:
        while True:
            method, _, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((method.routing_key, json.loads(body)))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def day_one(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str):
    base = tmp_path_factory.mktemp("day-one")
    token = uuid.uuid4().hex[:8]
    dbs = [f"prefect_day1_{token}", f"registry_day1_{token}"]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        for db in dbs:
            conn.execute(f'CREATE DATABASE "{db}"')
    pg = PG_ADMIN_DSN.rsplit("/", 1)[0]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "INGEST_"))}
    port = free_port()
    # docs/operations.md §2: the server's settings come from `server-settings`
    printed = _run({**clean, "INGEST_HOME": str(base / "cli")}, sys.executable, "flows/run.py", "server-settings",
                   f"http://127.0.0.1:{port}", "--format", "env").stdout
    settings = _exports(printed)
    assert settings["PREFECT_UI_API_URL"] == f"http://127.0.0.1:{port}/api"
    server_env = {**clean, **{k: v for k, v in settings.items() if k != "PREFECT_API_URL"},
                  "PREFECT_HOME": str(base / "prefect-server"),
                  "PREFECT_API_DATABASE_CONNECTION_URL": f"{pg.replace('postgresql://', 'postgresql+asyncpg://')}/{dbs[0]}",
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start"], cwd=ROOT, env=server_env,
                              stdout=open(base / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    procs = [server]
    # every other process: PREFECT_API_URL and INGEST_HOME (§2, §3, §5)
    env = {**clean, "PREFECT_API_URL": settings["PREFECT_API_URL"], "INGEST_HOME": str(base / "ingest"),
           "PREFECT_HOME": str(base / "prefect-client"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "WARNING"}
    import httpx

    _wait(lambda: _healthy(httpx, settings["PREFECT_API_URL"]), 300, "the Prefect server")
    bucket = f"vault-{token}"
    try:
        # §3: init with S3 credentials in the environment; the bucket does not exist yet
        init = _run({**env, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}, sys.executable,
                    "flows/run.py", "init", "--registry-dsn", f"{pg}/{dbs[1]}", "--amqp-url", AMQP_URL,
                    "--s3-bucket", bucket, "--s3-endpoint", s3_endpoint)
        report = json.loads(init.stdout.strip().splitlines()[-1])
        assert report["vault"]["bucket_state"] == "created", report
        assert report["prefect_api"]["url"] == settings["PREFECT_API_URL"] and not report["prefect_api"]["managed"]
        _run(env, sys.executable, "flows/run.py", "broker", "setup", "--local-cega")
        _run(env, sys.executable, "flows/run.py", "deploy")  # §4
        for queue in ("files", "completed", "errors"):
            _drain(queue)
        logs = base / "logs"
        logs.mkdir()
        for name, argv in (("worker", [sys.executable, "flows/run.py", "worker", "--pool", "ingest", "--limit", "4"]),  # §5 (no AWS environment: the block has the keys)
                           ("listener", [sys.executable, "flows/run.py", "listen", "--queue", "files",
                                         "--deployment", "ingest-ega-file/ega"])):  # §6
            procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(logs / f"{name}.log", "w"),
                                          stderr=subprocess.STDOUT, start_new_session=True))
        # an upload in the inbox, encrypted to the archive key init made, and CEGA's message for it
        from flows.ega.demo import encrypt_for_archive

        inbox = base / "ingest" / "inbox" / "day-one-user"
        inbox.mkdir(parents=True)
        for name in ("reads", "bad"):  # each its own encryption: a reused session key is refused
            plain = inbox / f"{name}.txt"
            plain.write_bytes(os.urandom(3 << 20))
            encrypt_for_archive(plain, inbox / f"{name}.txt.gpg", base / "ingest" / "keys" / "ega.pub.asc")
            plain.unlink()
        md5 = hashlib.md5((inbox / "reads.txt.gpg").read_bytes()).hexdigest()
        good = f"EGAF{token.upper()}01"
        bad = f"EGAF{token.upper()}02"
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        ch = conn.channel()
        for stable_id, path, checksum in ((good, "reads.txt.gpg", md5), (bad, "bad.txt.gpg", "0" * 32)):
            body = {"user": "day-one-user", "filepath": path, "stable_id": stable_id,
                    "encrypted_integrity": {"checksum": checksum, "algorithm": "md5"}}
            ch.basic_publish("", "files", json.dumps(body).encode(),
                             pika.BasicProperties(delivery_mode=2, correlation_id=f"corr-{stable_id}"))
        conn.close()
        completed: list = []
        errors: list = []
        _wait(lambda: completed.extend(b for _, b in _drain("completed") if b.get("stable_id") == good)
              or completed, 600, "files.completed from the worker", interval=2)
        _wait(lambda: errors.extend(b for _, b in _drain("errors") if b.get("stable_id") == bad)
              or errors, 300, "files.error for the bad checksum", interval=2)
        yield DayOne(settings["PREFECT_UI_API_URL"][: -len("/api")], settings["PREFECT_API_URL"], bucket,
                     s3_endpoint, {"stable_id": good, "reply": completed[0]}, {"stable_id": bad, "reply": errors[0]},
                     env)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            for db in dbs:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def _healthy(httpx, api: str) -> bool:
    try:
        return httpx.get(api + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_first_ega_message_completes_over_s3_as_documented(day_one: DayOne) -> None:
    import boto3

    reply = day_one.completed["reply"]
    assert reply["stable_id"] == day_one.completed["stable_id"]
    s3 = boto3.client("s3", endpoint_url=day_one.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=day_one.bucket).get("Contents", [])]
    assert [k for k in keys if day_one.completed["stable_id"] in k and k.endswith(".c4gh")], keys
    assert not [k for k in keys if "probe" in k or "vault-tmp" in k], keys
    assert "checksum" in json.dumps(day_one.failed["reply"]).lower()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _dom(url: str, must_contain: str, tries: int = 4) -> str:
    """The page as the browser rendered it, after its API calls (the UI is a single-page app)."""
    text = ""
    for attempt in range(tries):
        # a tall window: the runs list is a virtual scroller that renders only rows in view
        proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--window-size=1400,2000", f"--virtual-time-budget={15000 * (attempt + 1)}",
                               "--dump-dom", url],
                              capture_output=True, text=True, timeout=180)
        text = proc.stdout
        if must_contain in text:
            return text
    return text


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_the_ui_names_runs_after_their_object_and_shows_readable_reports(day_one: DayOne) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    good, bad = day_one.completed["stable_id"], day_one.failed["stable_id"]
    runs_page = _dom(f"{day_one.ui}/runs", f"ega-{good}")
    assert f"ega-{good}" in runs_page and f"ega-{bad}" in runs_page, runs_page[-3000:]

    with temporary_settings({PREFECT_API_URL: day_one.api}):
        with get_client(sync_client=True) as client:
            artifacts = {a.key: a for a in client.read_artifacts() if a.key}
    report = artifacts[f"ega-{good.lower()}"]
    page = _dom(f"{day_one.ui}/artifacts/artifact/{report.id}", good)
    assert good in page and "3.0 MiB" in page and "sha256" in page, page[-3000:]
    sha256 = [line for line in report.data.splitlines() if line.startswith("| sha256 |")]
    assert sha256 and sha256[0].split("`")[1] in page

    failed = artifacts[f"ega-{bad.lower()}"]
    page = _dom(f"{day_one.ui}/artifacts/artifact/{failed.id}", "Failed (user error)")
    assert "Failed (user error)" in page and "checksum" in page.lower(), page[-3000:]
