"""A CLI call stopped in the middle of a large upload's byte pass stops at once, not when the pass ends:
SIGTERM (what a service manager or a Prefect cancel sends) kills the pass's process, the partial
staging file is removed, and the ingest is recorded as failed, ready for the next attempt."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ega.conftest import EgaEnv, new_stable_id

pytestmark = [pytest.mark.integration, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_MIB = 768  # a pass of 2+ s here on a quiet machine (384 MiB passed in ~1.1 s, inside one cancel check)


def byte_pass_pids(parent: int) -> list[int]:
    """The byte pass processes a call started (their argv names the parent's pid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tasks.reencrypt_child" in argv and str(parent).encode() in argv:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def make_large_upload(env: EgaEnv, gpg, name: str) -> tuple[Path, dict[str, str]]:
    """A random upload of UPLOAD_MIB, encrypted as a submitter would, and its checksums."""
    plain = env.inbox.parent / f"plain-{name}"
    plain_sha256 = hashlib.sha256()
    with open(plain, "wb") as fh:
        for _ in range(UPLOAD_MIB):
            block = os.urandom(1 << 20)
            plain_sha256.update(block)
            fh.write(block)
    upload = env.inbox / env.user / f"{name}.gpg"
    upload.parent.mkdir(parents=True, exist_ok=True)
    gpg(plain, upload, "--compress-algo", "none")
    plain.unlink()
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(upload, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return upload, {"md5": md5.hexdigest(), "sha256": sha256.hexdigest(), "plain_sha256": plain_sha256.hexdigest()}


@pytest.fixture
def large_upload(ega_env: EgaEnv, gpg) -> tuple[dict, Path]:
    upload, sums = make_large_upload(ega_env, gpg, "large.bin")
    msg = {"user": ega_env.user, "filepath": upload.name, "stable_id": new_stable_id(),
           "encrypted_integrity": {"checksum": sums["md5"], "algorithm": "md5"},
           "unencrypted_integrity": {"checksum": sums["plain_sha256"], "algorithm": "sha256"}}
    return msg, upload


def start_call(env: EgaEnv, message: dict, prefect_api: str, tmp_path: Path) -> subprocess.Popen:
    """``python flows/run.py ega --message M.json`` as a user runs it (in its own process)."""
    path = tmp_path / "message.json"
    path.write_text(json.dumps(message))
    return subprocess.Popen([sys.executable, str(ROOT / "flows" / "run.py"), "ega", "--message", str(path),
                             "--config", env.name],
                            env={**os.environ, "PREFECT_API_URL": prefect_api, "INGEST_RETRY_BASE_SECONDS": "0.1",
                                 # a child from 100 MiB (1 GiB by default): keeps the upload small
                                 "INGEST_BYTE_PASS_CHILD_MIN_BYTES": str(100 << 20)},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_mid_pass(env: EgaEnv, call: subprocess.Popen, upload: Path) -> list[int]:
    """Until the byte pass has written part of the staging file; its process ids."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and call.poll() is None:
        children = byte_pass_pids(call.pid)
        if children and any(p.stat().st_size > (8 << 20) for p in env.staging_files()):
            assert sum(p.stat().st_size for p in env.staging_files()) < upload.stat().st_size // 2
            return children
        time.sleep(0.05)
    pytest.fail(f"the pass never got under way: {call.poll()} {call.stderr.read() if call.poll() else ''}")


def test_sigterm_mid_pass_stops_the_call_at_once_and_undoes_the_ingest(ega_env: EgaEnv, large_upload, prefect_api,
                                                                      pg_dsn: str, tmp_path: Path) -> None:
    msg, upload = large_upload
    call = start_call(ega_env, msg, prefect_api, tmp_path)
    try:
        children = wait_mid_pass(ega_env, call, upload)
        stopped = time.monotonic()
        call.send_signal(signal.SIGTERM)
        assert all(not alive(pid) for pid in _wait_dead(children, 2.0)), "the byte pass ran on after the SIGTERM"
        out, err = call.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if call.poll() is None:
            call.kill()
            call.wait()
    assert call.returncode != 0, out
    assert took < 10, f"the call took {took:.1f} s to stop"
    assert ega_env.staging_files() == [] and ega_env.vault_files() == []
    from tasks.registry import Registry

    with Registry(pg_dsn) as reg:
        ingest = reg.execute("SELECT state FROM ingests WHERE natural_key LIKE %s", (msg["stable_id"] + "|%",))[0]
        upload_row = reg.execute("SELECT status FROM ega_files WHERE user_name = %s AND filepath = %s",
                                 (msg["user"], msg["filepath"]))[0]
    assert ingest["state"] == "failed" and upload_row["status"] == "failed", (ingest, upload_row, err[-2000:])
    # Not the submitter's fault: CEGA hears nothing of it.
    assert "files.error" not in [rk for rk, _, _ in ega_env.messages("cega")]

    # The next attempt starts from scratch and completes.
    code, summary = ega_env.run(msg)
    assert code == 0 and summary["state"] == "COMPLETED", summary


def _wait_dead(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.02)
    return pids


def test_sda_cancel_recorded_mid_pass_stops_the_pass(sda_env: EgaEnv, gpg, prefect_api, tmp_path: Path) -> None:
    """SDA's cancel message, handled by another run while the pass runs, stops it within seconds."""
    from datetime import UTC, datetime

    from flows.ega import sda_steps
    from flows.ega.config import load_config
    from flows.ega.sda_messages import IngestionTrigger

    upload, sums = make_large_upload(sda_env, gpg, "large.bam")
    trigger = {"type": "ingest", "user": sda_env.user, "filepath": upload.name,
               "encrypted_checksums": [{"type": "sha256", "value": sums["sha256"]}]}
    call = start_call(sda_env, trigger, prefect_api, tmp_path)
    try:
        children = wait_mid_pass(sda_env, call, upload)
        cfg = load_config(sda_env.name)
        try:
            sda_steps.cancel(cfg, IngestionTrigger.model_validate({**trigger, "type": "cancel"}), None,
                             datetime.now(UTC))
        finally:
            cfg.close()
        cancelled = time.monotonic()
        assert all(not alive(pid) for pid in _wait_dead(children, 10.0)), "the pass ran on after the cancel"
        out, err = call.communicate(timeout=60)
        took = time.monotonic() - cancelled
    finally:
        if call.poll() is None:
            call.kill()
            call.wait()
    summary = json.loads(out.splitlines()[-1])
    assert summary["state"] == "CANCELLED" and "during the decrypt pass" in summary.get("error", ""), (summary, err)
    assert took < 15, f"the call took {took:.1f} s to stop"
    assert sda_env.staging_files() == [] and sda_env.vault_files() == []
