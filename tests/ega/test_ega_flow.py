"""EGA ingest end to end: gpg-encrypted uploads in, crypt4gh-decryptable vault objects out,
status messages on a real RabbitMQ, rows in a real PostgreSQL."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pika
import pytest

from tests.conftest import free_port
from tests.ega.conftest import EgaEnv, new_stable_id, save_blocks

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def c4gh_decrypt(env: EgaEnv, vault_file: Path) -> bytes:
    """The reference CLI is the judge of our Crypt4GH output."""
    proc = subprocess.run(["crypt4gh", "decrypt", "--sk", str(env.keys.c4gh_sec)], stdin=open(vault_file, "rb"),
                          capture_output=True, check=True,
                          env={**os.environ, "C4GH_PASSPHRASE": env.keys.passphrase})
    return proc.stdout


def submit(env: EgaEnv, gpg, data: bytes, *gpg_options: str, stdin: bool = False, user: str | None = None,
           name: str = "sample.bam", with_checksums: bool = True) -> tuple[dict, Path]:
    user = user or env.user
    plain = env.inbox.parent / f"plain-{name}"
    plain.write_bytes(data)
    upload = env.inbox / user / f"{name}.gpg"
    upload.parent.mkdir(parents=True, exist_ok=True)
    gpg(plain, upload, *gpg_options, stdin=stdin)
    msg = {"user": user, "filepath": f"{name}.gpg", "stable_id": new_stable_id()}
    if with_checksums:
        msg["encrypted_integrity"] = {"checksum": hashlib.md5(upload.read_bytes()).hexdigest(), "algorithm": "md5"}
        msg["unencrypted_integrity"] = {"checksum": hashlib.sha256(data).hexdigest(), "algorithm": "sha256"}
    return msg, upload


CASES = {
    "aes256-uncompressed": (b"ACGT" * 5000, ["--cipher-algo", "AES256", "--compress-algo", "none"], False),
    "aes128-zip": (b"hello genome\n" * 3000, ["--cipher-algo", "AES128", "--compress-algo", "zip"], False),
    "aes256-zlib": (os.urandom(70000), ["--cipher-algo", "AES256", "--compress-algo", "zlib"], False),
    "aes192-bzip2": (b"x" * 100000, ["--cipher-algo", "AES192", "--compress-algo", "bzip2"], False),
    "empty": (b"", ["--compress-algo", "none"], False),
    "one-byte": (b"A", ["--compress-algo", "none"], False),
    "10MB-partial-lengths": (os.urandom(10_000_000), ["--compress-algo", "none"], True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ingest_decrypts_with_crypt4gh_cli(ega_env: EgaEnv, gpg, case: str) -> None:
    data, options, stdin = CASES[case]
    msg, upload = submit(ega_env, gpg, data, *options, stdin=stdin, name=f"{case}.bin")
    code, summary = ega_env.run(msg, correlation_id=f"corr-{case}")
    assert code == 0, summary
    assert summary["state"] == "COMPLETED"
    assert summary["checksums"]["decrypted"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert summary["checksums"]["encrypted"]["md5"] == hashlib.md5(upload.read_bytes()).hexdigest()
    vault_file = Path(summary["vault_uri"].removeprefix("file://"))
    assert c4gh_decrypt(ega_env, vault_file) == data
    assert summary["checksums"]["archived"]["sha256"] == hashlib.sha256(vault_file.read_bytes()).hexdigest()
    assert ega_env.staging_files() == []
    keys = [rk for rk, _, _ in ega_env.messages("cega")]
    assert keys == ["files.processing", "files.completed"]
    assert [rk for rk, _, _ in ega_env.messages("lega")] == ["archived", "qc"]


def test_end_to_end_over_rabbitmq(ega_env: EgaEnv, gpg, amqp_url: str, unique: str) -> None:
    """A trigger published on the files queue is ingested and answered with files.completed."""
    from deployments.adapters import EgaAdapter
    from tasks.notify import TransportConfig

    files_queue = f"files-{unique}"
    msg, _ = submit(ega_env, gpg, b"reads\n" * 1000, "--compress-algo", "none")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_declare(files_queue, durable=True)
    ch.basic_publish("", files_queue, json.dumps(msg).encode(),
                     pika.BasicProperties(correlation_id="corr-e2e", delivery_mode=2))
    method, props, body = ch.basic_get(files_queue)
    accepted = EgaAdapter(TransportConfig(amqp_url=amqp_url), ega_env.cega).accept(body, props.correlation_id)
    code, summary = ega_env.run(accepted.parameters["message"], correlation_id=accepted.parameters["correlation_id"])
    ch.basic_ack(method.delivery_tag)
    ch.queue_delete(files_queue)
    conn.close()
    assert code == 0, summary
    completed = [(b, p) for rk, b, p in ega_env.messages("cega") if rk == "files.completed"]
    assert len(completed) == 1
    body, props = completed[0]
    assert body == {"user": msg["user"], "filepath": msg["filepath"], "stable_id": msg["stable_id"],
                    "status": {"state": "COMPLETED",
                               "details": f"File ingested, refer to it with {msg['stable_id']}"}}
    assert props.correlation_id == "corr-e2e" and props.delivery_mode == 2


def test_same_message_twice_gives_one_object_and_one_row(ega_env: EgaEnv, gpg, pg_dsn: str) -> None:
    from tasks.registry import Registry

    msg, _ = submit(ega_env, gpg, b"twice\n" * 500, "--compress-algo", "none")
    code1, first = ega_env.run(msg)
    code2, second = ega_env.run(msg)
    assert code1 == code2 == 0
    assert first["vault_uri"] == second["vault_uri"]
    assert first["checksums"] == second["checksums"]
    assert len(ega_env.vault_files()) == 1
    with Registry(pg_dsn) as reg:
        rows = reg.execute("SELECT * FROM ega_files WHERE stable_id = %s", (msg["stable_id"],))
        files = reg.execute("SELECT * FROM files WHERE domain = 'ega' AND file_key = %s", (msg["stable_id"],))
        events = reg.execute("SELECT e.event_type FROM events e JOIN ingests i ON i.id = e.ingest_id "
                             "WHERE i.domain = 'ega' AND i.natural_key LIKE %s", (msg["stable_id"] + "|%",))
    assert len(rows) == 1 and rows[0]["status"] == "completed" and len(files) == 1
    assert {"message digest calculation", "decryption", "encryption", "ingestion", "fixity check"} <= {
        e["event_type"] for e in events}
    digests = [e for e in events if e["event_type"] == "message digest calculation"]
    assert len(digests) == 3  # encrypted md5 (the message's algorithm), decrypted md5 + sha256
    assert len(events) == len({e["event_type"] for e in events}) + 2  # and no event twice
    completed = [rk for rk, _, _ in ega_env.messages("cega") if rk == "files.completed"]
    assert len(completed) == 2  # each run reports its terminal status once


def test_reupload_with_new_checksum_disables_older_record(ega_env: EgaEnv, gpg, pg_dsn: str) -> None:
    from tasks.registry import Registry

    msg1, _ = submit(ega_env, gpg, b"version one\n", "--compress-algo", "none")
    assert ega_env.run(msg1)[0] == 0
    msg2, _ = submit(ega_env, gpg, b"version two\n", "--compress-algo", "none")
    msg2["stable_id"] = msg1["stable_id"]
    code, summary = ega_env.run(msg2)
    assert code == 0, summary
    with Registry(pg_dsn) as reg:
        rows = reg.execute("SELECT status, upload_checksum FROM ega_files WHERE user_name = %s AND filepath = %s "
                           "ORDER BY id", (msg1["user"], msg1["filepath"]))
    assert [r["status"] for r in rows] == ["disabled", "completed"]
    assert rows[1]["upload_checksum"] == msg2["encrypted_integrity"]["checksum"]


def test_checksums_from_companion_files(ega_env: EgaEnv, gpg) -> None:
    data = b"companion\n" * 100
    msg, upload = submit(ega_env, gpg, data, "--compress-algo", "none", with_checksums=False)
    (upload.parent / (upload.name + ".sha256")).write_text(
        f"{hashlib.sha256(upload.read_bytes()).hexdigest()}  {upload.name}\n")
    (upload.parent / "sample.bam.md5").write_text(hashlib.md5(data).hexdigest() + "\n")
    code, summary = ega_env.run(msg)
    assert code == 0, summary
    (upload.parent / "sample.bam.md5").write_text("0" * 32)  # a wrong plaintext checksum is caught
    msg2, upload2 = submit(ega_env, gpg, data, "--compress-algo", "none", with_checksums=False)
    code, summary = ega_env.run(msg2)  # the stale .sha256 names the first upload, not this one
    assert code == 1 and summary["error"].startswith("encrypted checksum mismatch"), summary
    (upload2.parent / (upload2.name + ".sha256")).unlink()
    (upload2.parent / (upload2.name + ".md5")).write_text(hashlib.md5(upload2.read_bytes()).hexdigest())
    code, summary = ega_env.run(msg2)
    assert code == 1 and summary["error"].startswith("decrypted checksum mismatch"), summary


def test_session_key_reuse_for_another_file_is_refused(ega_env: EgaEnv, gpg) -> None:
    msg1, upload = submit(ega_env, gpg, b"same session key\n", "--compress-algo", "none", name="a.txt")
    assert ega_env.run(msg1)[0] == 0
    copy = ega_env.inbox / ega_env.user / "copy-of-a.txt.gpg"
    copy.write_bytes(upload.read_bytes())
    msg2 = {**msg1, "filepath": copy.name, "stable_id": new_stable_id()}
    code, summary = ega_env.run(msg2)
    assert code == 1 and "session key already used" in summary["error"]


# ------------------------------------------------------------------ user errors

def _tamper(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-30] ^= 0x01
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


USER_ERRORS = {
    "file not found": (lambda m, u, env: m.update(filepath="nope.gpg"), "file not found in inbox"),
    "path traversal": (lambda m, u, env: m.update(filepath="../john/secret.gpg"), "escapes its root"),
    "absolute path": (lambda m, u, env: m.update(filepath="/etc/passwd"), "is absolute"),
    "not OpenPGP": (lambda m, u, env: (u.write_bytes(b"just some plain text\n" * 10),
                                      m["encrypted_integrity"].update(checksum=hashlib.md5(u.read_bytes()).hexdigest())),
                    "not an OpenPGP"),
    "encrypted checksum mismatch": (lambda m, u, env: m["encrypted_integrity"].update(checksum="0" * 32),
                                    "encrypted checksum mismatch"),
    "decrypted checksum mismatch": (lambda m, u, env: m["unencrypted_integrity"].update(checksum="0" * 64),
                                    "decrypted checksum mismatch"),
    "missing checksum": (lambda m, u, env: m.pop("encrypted_integrity"), "no checksum for the encrypted file"),
    "unsupported algorithm": (lambda m, u, env: m["encrypted_integrity"].update(algorithm="sha1"),
                              "unsupported hash algorithm"),
    "tampered ciphertext": (lambda m, u, env: (_tamper(u), m["encrypted_integrity"].update(
        checksum=hashlib.md5(u.read_bytes()).hexdigest())), "modification detection"),
    "truncated file": (lambda m, u, env: (_truncate(u), m["encrypted_integrity"].update(
        checksum=hashlib.md5(u.read_bytes()).hexdigest())), "truncated"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_report_files_error_and_leave_nothing(ega_env: EgaEnv, gpg, case: str) -> None:
    mutate, expected = USER_ERRORS[case]
    msg, upload = submit(ega_env, gpg, os.urandom(200_000), "--compress-algo", "none")
    mutate(msg, upload, ega_env)
    code, summary = ega_env.run(msg, correlation_id="corr-err")
    assert code == 1, summary
    assert summary["state"] == "ERROR"
    assert expected.lower() in summary["error"].lower(), summary["error"]
    errors = [(b, p) for rk, b, p in ega_env.messages("cega") if rk == "files.error"]
    assert len(errors) == 1
    body, props = errors[0]
    assert body["status"]["state"] == "ERROR" and expected.lower() in body["status"]["details"].lower()
    assert body["stable_id"] == msg["stable_id"] and props.correlation_id == "corr-err"
    assert ega_env.staging_files() == []
    assert ega_env.vault_files() == []


def test_unrelated_key_is_a_user_error(ega_env: EgaEnv, tmp_path: Path) -> None:
    from tasks.keys import ensure_pgp_keypair

    other_sec, other_pub = ensure_pgp_keypair(tmp_path / "other", "other")
    home = tmp_path / "gnupg-other"
    home.mkdir(mode=0o700)
    plain = tmp_path / "p.txt"
    plain.write_bytes(b"not for you\n")
    upload = ega_env.upload(ega_env.user, "wrong-key.txt.gpg", b"")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--trust-model", "always", "--encrypt",
                    "--recipient-file", str(other_pub), "-o", str(upload), str(plain)], check=True,
                   capture_output=True)
    msg = {"user": ega_env.user, "filepath": "wrong-key.txt.gpg", "stable_id": new_stable_id(),
           "encrypted_integrity": {"checksum": hashlib.md5(upload.read_bytes()).hexdigest(), "algorithm": "md5"}}
    code, summary = ega_env.run(msg)
    assert code == 1 and summary["error"] == "encrypted with an unrelated key"
    assert [rk for rk, _, _ in ega_env.messages("cega")][-1] == "files.error"


# ------------------------------------------------------------------ system faults

def test_keyserver_down_is_a_system_failure_without_files_error(ega_env: EgaEnv, gpg, pg_dsn: str,
                                                                  amqp_url: str) -> None:
    name = ega_env.name + "-ks"
    save_blocks(name, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=ega_env.cega, lega=ega_env.lega, keys=ega_env.keys,
                vault_root=ega_env.vault_root, keyserver_url=f"http://127.0.0.1:{free_port()}")
    msg, _ = submit(ega_env, gpg, b"keyserver down\n", "--compress-algo", "none")
    from flows.ega.cli import run_message

    code, summary = run_message(msg, config_block=name)
    assert code == 2, summary
    assert summary["state"] == "FAILED" and "ConnectError" in summary["error"]
    assert "files.error" not in [rk for rk, _, _ in ega_env.messages("cega")]
    from tasks.registry import Registry

    with Registry(pg_dsn) as reg:
        ingest = reg.execute("SELECT state, last_error, attempts FROM ingests WHERE natural_key LIKE %s",
                             (msg["stable_id"] + "|%",))[0]
    assert ingest["state"] == "failed" and "ConnectError" in ingest["last_error"]


def test_vault_write_failing_mid_stream_leaves_no_object(ega_env: EgaEnv, gpg, pg_dsn: str, amqp_url: str,
                                                         tmp_path: Path) -> None:
    small = tmp_path / "small-vault"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        name = ega_env.name + "-full"
        save_blocks(name, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=ega_env.cega, lega=ega_env.lega,
                    keys=ega_env.keys, vault_root=small)
        msg, _ = submit(ega_env, gpg, os.urandom(3_000_000), "--compress-algo", "none")
        from flows.ega.cli import run_message

        code, summary = run_message(msg, config_block=name)
        assert code == 2, summary
        assert "No space left" in summary["error"] or "Errno 28" in summary["error"]
        assert [p for p in small.rglob("*") if p.is_file()] == []
        assert "files.error" not in [rk for rk, _, _ in ega_env.messages("cega")]
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_redelivery_after_inbox_cleanup_reports_the_existing_result(ega_env: EgaEnv, gpg) -> None:
    msg, upload = submit(ega_env, gpg, b"cleaned up later\n", "--compress-algo", "none")
    code, first = ega_env.run(msg)
    assert code == 0
    upload.unlink()
    code, second = ega_env.run(msg)
    assert code == 0 and second["vault_uri"] == first["vault_uri"], second


def test_crash_after_vault_write_resumes_at_registry_without_decrypting(ega_env: EgaEnv, gpg) -> None:
    """Leave the state a run killed right after the vault write leaves, then run again."""
    from flows.ega import steps
    from flows.ega.config import load_config
    from flows.ega.messages import validate_message

    msg, _ = submit(ega_env, gpg, os.urandom(300_000), "--compress-algo", "none")
    message = validate_message(msg)
    cfg = load_config(ega_env.name)
    try:
        ingest_id = steps.register(cfg, message, None, None)
        located = steps.locate(cfg, message, ingest_id)
        staged = steps.reencrypt_to_staging(cfg, located, steps.fetch_key(cfg, located))
        row = steps.archive(cfg, message, located, staged, None)  # ... and the process dies here
    finally:
        cfg.close()
    vault_file = Path(row["archive_uri"].removeprefix("file://"))
    before = hashlib.sha256(vault_file.read_bytes()).hexdigest()
    code, summary = ega_env.run(msg)
    assert code == 0, summary
    # Crypt4GH output is randomised: a second decryption would have written different bytes.
    assert hashlib.sha256(vault_file.read_bytes()).hexdigest() == before == summary["checksums"]["archived"]["sha256"]
    assert ega_env.vault_files() == [vault_file]


def test_ingest_into_an_s3_vault(ega_env: EgaEnv, gpg, pg_dsn: str, amqp_url: str, s3_endpoint: str,
                                 s3_bucket: str, tmp_path: Path) -> None:
    import boto3

    from blocks.vault import VaultBlock

    name = ega_env.name + "-s3"
    save_blocks(name, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=ega_env.cega, lega=ega_env.lega, keys=ega_env.keys,
                vault_block=VaultBlock.for_s3(s3_bucket, endpoint_url=s3_endpoint, access_key_id="testing",
                                              secret_access_key="testing", region="us-east-1", prefix="archive"))
    data = os.urandom(6_000_000)
    msg, _ = submit(ega_env, gpg, data, "--compress-algo", "none")
    from flows.ega.cli import run_message

    code, summary = run_message(msg, config_block=name)
    assert code == 0, summary
    assert summary["vault_uri"].startswith(f"s3://{s3_bucket}/archive/ega/{msg['stable_id']}/")
    key = summary["vault_uri"].removeprefix(f"s3://{s3_bucket}/")
    local = tmp_path / "from-s3.c4gh"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").download_file(s3_bucket, key, str(local))
    assert c4gh_decrypt(ega_env, local) == data


def test_run_publishes_a_summary_artifact_for_the_ui(ega_env: EgaEnv, gpg) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.reporting import artifact_key

    msg, _ = submit(ega_env, gpg, b"report me\n" * 50, "--compress-algo", "none")
    code, summary = ega_env.run(msg)
    assert code == 0
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key("ega", msg["stable_id"])])))
    assert len(arts) == 1 and arts[0].type == "markdown"
    text = arts[0].data
    assert summary["vault_uri"] in text and summary["checksums"]["decrypted"]["sha256"] in text
    assert "fixity check" in text and "decryption" in text
