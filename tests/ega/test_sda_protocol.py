"""EGA over the SDA (Federated EGA) protocol, end to end on the real RabbitMQ and PostgreSQL.

Verbatim SDA messages in (no stable_id in the trigger); every message we emit is checked
against our models of the SDA schemas.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.ega.conftest import EgaEnv, new_accession_id

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def upload(env: EgaEnv, gpg, data: bytes, name: str = "reads.bam") -> tuple[dict, Path]:
    plain = env.inbox.parent / f"plain-{name}"
    plain.write_bytes(data)
    path = env.inbox / env.user / "sub" / f"{name}.gpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    gpg(plain, path, "--compress-algo", "none")
    trigger = {"type": "ingest", "user": env.user, "filepath": f"sub/{name}.gpg",
               "encrypted_checksums": [{"type": "sha256", "value": hashlib.sha256(path.read_bytes()).hexdigest()},
                                       {"type": "md5", "value": hashlib.md5(path.read_bytes()).hexdigest()}]}
    return trigger, path


def sda_messages(env: EgaEnv) -> list[tuple[str, dict]]:
    """Everything published on the node's exchange, each body checked against our SDA models."""
    from flows.ega.sda_messages import check_emitted

    out = []
    for rk, body, props in env.messages("sda"):
        check_emitted(rk, body)
        assert props.delivery_mode == 2
        out.append((rk, body))
    return out


def accession_for(trigger: dict, data: bytes, accession_id: str) -> dict:
    return {"type": "accession", "user": trigger["user"], "filepath": trigger["filepath"],
            "accession_id": accession_id,
            "decrypted_checksums": [{"type": "sha256", "value": hashlib.sha256(data).hexdigest()},
                                    {"type": "md5", "value": hashlib.md5(data).hexdigest()}]}


def run(env: EgaEnv, raw: dict, *, received_at: datetime | None = None, correlation_id: str | None = None):
    from flows.ega.cli import run_message, run_sda_message

    if received_at is None:
        return run_message(raw, correlation_id=correlation_id, config_block=env.name)
    return run_sda_message(raw, correlation_id=correlation_id, config_block=env.name, received_at=received_at)


def ega_row(pg_dsn: str, user: str) -> list[dict]:
    from tasks.registry import Registry

    with Registry(pg_dsn) as reg:
        return reg.execute("SELECT * FROM ega_files WHERE user_name = %s ORDER BY id", (user,))


def test_trigger_verify_accession_completion(sda_env: EgaEnv, gpg, pg_dsn: str) -> None:
    """1. the trigger starts the ingest; 2. verification reported, accession requested;
    3. the accession completes it under that id; 4. ingestion-completion follows."""
    data = os.urandom(200_000)
    trigger, _ = upload(sda_env, gpg, data)
    code, first = run(sda_env, trigger, correlation_id="corr-sda")
    assert code == 0, first
    assert first["state"] == "AWAITING_ACCESSION" and first["stable_id"] is None
    sent = sda_messages(sda_env)
    assert [rk for rk, _ in sent] == ["archived", "verified"]
    verification, request = sent[0][1], sent[1][1]
    assert verification["file_id"] == first["file_id"] and isinstance(verification["file_id"], str)
    assert verification["re_verify"] is False and verification["archive_path"].endswith(".c4gh")
    assert request == {"user": sda_env.user, "filepath": trigger["filepath"],
                       "decrypted_checksums": [{"type": "sha256", "value": hashlib.sha256(data).hexdigest()},
                                               {"type": "md5", "value": hashlib.md5(data).hexdigest()}]}
    assert len(sda_env.vault_files()) == 1 and sda_env.staging_files() == []
    assert [r["status"] for r in ega_row(pg_dsn, sda_env.user)] == ["awaiting_accession"]

    accession_id = new_accession_id()
    code, done = run(sda_env, accession_for(trigger, data, accession_id), correlation_id="corr-sda")
    assert code == 0, done
    assert done["state"] == "COMPLETED" and done["stable_id"] == accession_id
    sent = sda_messages(sda_env)
    assert sent == [("completed", {"user": sda_env.user, "filepath": trigger["filepath"], "accession_id": accession_id,
                                   "decrypted_checksums": request["decrypted_checksums"]})]
    vault_file = Path(done["vault_uri"].removeprefix("file://"))
    with open(vault_file, "rb") as sealed:
        plain = subprocess.run(["crypt4gh", "decrypt", "--sk", str(sda_env.keys.c4gh_sec)], stdin=sealed,
                               capture_output=True, check=True,
                               env={**os.environ, "C4GH_PASSPHRASE": sda_env.keys.passphrase}).stdout
    assert plain == data
    from tasks.registry import Registry

    with Registry(pg_dsn) as reg:
        files = reg.execute("SELECT * FROM files WHERE domain = 'ega' AND file_key = %s", (accession_id,))
        events = reg.execute("SELECT e.event_type FROM events e JOIN ingests i ON i.id = e.ingest_id "
                             "WHERE i.natural_key = %s", (f"sda|{sda_env.user}/{trigger['filepath']}",))
        ingest = reg.execute("SELECT state FROM ingests WHERE natural_key = %s",
                             (f"sda|{sda_env.user}/{trigger['filepath']}",))
    assert len(files) == 1 and ingest[0]["state"] == "completed"
    assert {"identifier assignment", "ingestion", "fixity check", "decryption"} <= {e["event_type"] for e in events}

    # The same accession again (CEGA re-sends): the same answer, nothing redone.
    code, again = run(sda_env, accession_for(trigger, data, accession_id))
    assert code == 0 and again["stable_id"] == accession_id
    assert [rk for rk, _ in sda_messages(sda_env)] == ["completed"]
    assert len(sda_env.vault_files()) == 1


def test_verbatim_trigger_without_checksums_is_ingested(sda_env: EgaEnv, gpg) -> None:
    """SDA allows a trigger with no encrypted_checksums: the node computes the checksum itself."""
    trigger, _ = upload(sda_env, gpg, b"ACGT" * 1000)
    del trigger["encrypted_checksums"]
    code, summary = run(sda_env, trigger)
    assert code == 0, summary
    assert summary["state"] == "AWAITING_ACCESSION"
    assert [rk for rk, _ in sda_messages(sda_env)] == ["archived", "verified"]


def test_cancel_after_verification_undoes_it(sda_env: EgaEnv, gpg, pg_dsn: str) -> None:
    data = b"to be cancelled\n" * 1000
    trigger, _ = upload(sda_env, gpg, data)
    assert run(sda_env, trigger)[0] == 0
    sda_messages(sda_env)
    assert len(sda_env.vault_files()) == 1
    code, result = run(sda_env, {**trigger, "type": "cancel"})
    assert code == 0 and result["state"] == "CANCELLED" and result["cancelled_uploads"] == 1, result
    assert sda_env.vault_files() == [] and sda_env.staging_files() == []
    assert [r["status"] for r in ega_row(pg_dsn, sda_env.user)] == ["cancelled"]
    # The accession CEGA had already sent arrives: nothing is completed, nothing sent.
    code, late = run(sda_env, accession_for(trigger, data, new_accession_id()))
    assert code == 0 and late["state"] == "CANCELLED", late
    assert sda_messages(sda_env) == []
    from tasks.registry import Registry

    with Registry(pg_dsn) as reg:
        ingest = reg.execute("SELECT * FROM ingests WHERE natural_key = %s",
                             (f"sda|{sda_env.user}/{trigger['filepath']}",))[0]
        events = reg.events(ingest["id"])
        files = reg.execute("SELECT * FROM files WHERE ingest_id = %s", (ingest["id"],))
    assert ingest["state"] == "cancelled" and files == []
    assert any(e["event_type"] == "deletion" and "cancelled" in e["detail"] for e in events)
    # the ingest's run had Completed (awaiting accession); it is undone, so it shows Cancelled
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_flow_run(ingest["flow_run_id"]).state.is_cancelled()


def test_cancel_received_before_the_ingest_ran_stops_it_and_never_starts_one(sda_env: EgaEnv, gpg,
                                                                              pg_dsn: str) -> None:
    """The trigger came first but its run starts after the cancel's: the cancel still wins. The cancel
    itself ingests nothing, and a trigger received after it ingests normally."""
    trigger, _ = upload(sda_env, gpg, b"x" * 5000)
    t0 = datetime.now(UTC)
    code, result = run(sda_env, {**trigger, "type": "cancel"}, received_at=t0 + timedelta(seconds=1))
    assert code == 0 and result["state"] == "CANCELLED" and result["cancelled_uploads"] == 0
    assert ega_row(pg_dsn, sda_env.user) == [] and sda_env.vault_files() == []
    code, stopped = run(sda_env, trigger, received_at=t0)
    assert code == 0 and stopped["state"] == "CANCELLED", stopped
    assert sda_env.vault_files() == [] and sda_env.staging_files() == []
    assert sda_messages(sda_env) == []
    code, later = run(sda_env, trigger, received_at=t0 + timedelta(seconds=2))
    assert code == 0 and later["state"] == "AWAITING_ACCESSION", later
    assert len(sda_env.vault_files()) == 1


@pytest.mark.parametrize("moment", ["after-decrypt-pass", "while-archiving"])
def test_cancel_during_the_ingest(sda_env: EgaEnv, gpg, monkeypatch, moment: str) -> None:
    """A cancel that lands mid-run: the staged file and the vault copy are gone, nothing is reported."""
    from flows.ega import sda_records, sda_steps
    from flows.ega.config import load_config
    from flows.ega.sda_messages import IngestionTrigger

    trigger, _ = upload(sda_env, gpg, os.urandom(300_000))
    seen = {}

    def cancel_now() -> None:
        seen["staged"] = sda_env.staging_files()
        seen["vault"] = sda_env.vault_files()
        cfg = load_config(sda_env.name)
        try:
            sda_steps.cancel(cfg, IngestionTrigger.model_validate({**trigger, "type": "cancel"}), None,
                             datetime.now(UTC))
        finally:
            cfg.close()

    if moment == "after-decrypt-pass":
        original = sda_records.is_cancelled

        def is_cancelled(*args, **kwargs):
            cancel_now()
            return original(*args, **kwargs)
        monkeypatch.setattr(sda_records, "is_cancelled", is_cancelled)
    else:
        original_mark = sda_records.mark_awaiting_accession

        def mark(*args, **kwargs):
            cancel_now()
            return original_mark(*args, **kwargs)
        monkeypatch.setattr(sda_records, "mark_awaiting_accession", mark)
    code, result = run(sda_env, trigger)
    assert code == 0 and result["state"] == "CANCELLED", result
    if moment == "after-decrypt-pass":
        assert len(seen["staged"]) == 1 and seen["vault"] == []  # the cancel came with the file staged
    else:
        assert seen["staged"] == [] and len(seen["vault"]) == 1  # ... and with it in the vault
    assert sda_env.staging_files() == [] and sda_env.vault_files() == []
    assert sda_messages(sda_env) == []


def test_cancel_of_a_completed_upload_is_refused(sda_env: EgaEnv, gpg) -> None:
    data = b"kept\n" * 100
    trigger, _ = upload(sda_env, gpg, data)
    run(sda_env, trigger)
    accession_id = new_accession_id()
    assert run(sda_env, accession_for(trigger, data, accession_id))[0] == 0
    sda_messages(sda_env)
    code, result = run(sda_env, {**trigger, "type": "cancel"})
    assert code == 1 and result["state"] == "REFUSED"
    sent = sda_messages(sda_env)
    assert [rk for rk, _ in sent] == ["error"] and accession_id in sent[0][1]["reason"]
    assert json.loads(sent[0][1]["original-message"])["type"] == "cancel"
    assert len(sda_env.vault_files()) == 1


def test_user_error_is_ingestion_user_error(sda_env: EgaEnv, gpg, pg_dsn: str) -> None:
    trigger, _ = upload(sda_env, gpg, b"abc" * 100)
    bad = {**trigger, "encrypted_checksums": [{"type": "sha256", "value": "0" * 64}]}
    code, summary = run(sda_env, bad)
    assert code == 1 and "checksum mismatch" in summary["error"], summary
    sent = sda_messages(sda_env)
    assert [rk for rk, _ in sent] == ["error"]
    assert sent[0][1]["user"] == sda_env.user and "checksum mismatch" in sent[0][1]["reason"]
    assert "error" not in sent[0][1]  # an ingestion-user-error, not an info-error
    assert sda_env.vault_files() == [] and sda_env.staging_files() == []


def test_system_error_is_info_error_never_blamed_on_the_user(sda_env: EgaEnv, gpg) -> None:
    blocker = sda_env.vault_root / "ega" / "sda"  # a file where the vault needs a directory: every put fails
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")
    trigger, _ = upload(sda_env, gpg, b"abc" * 100)
    code, summary = run(sda_env, trigger, correlation_id="corr-sys")
    assert code == 2, summary
    sent = sda_messages(sda_env)
    assert [rk for rk, _ in sent] == ["error"]
    body = sent[0][1]
    assert set(body) == {"error", "reason", "original-message"} and json.loads(body["original-message"]) == trigger
    assert sda_env.vault_files() == [blocker] and sda_env.staging_files() == []


def test_bad_accession_is_info_error(sda_env: EgaEnv, gpg) -> None:
    data = b"named later\n" * 100
    trigger, _ = upload(sda_env, gpg, data)
    run(sda_env, trigger)
    sda_messages(sda_env)
    wrong = accession_for(trigger, b"other content", new_accession_id())
    code, summary = run(sda_env, wrong)
    assert code == 1 and "no verified upload" in summary["error"]
    sent = sda_messages(sda_env)
    assert [rk for rk, _ in sent] == ["error"] and sent[0][1]["error"] == "accession refused"
    code, summary = run(sda_env, {**accession_for(trigger, data, "EGAF123")})
    assert code == 1 and "accession_id" in summary["error"]
    assert [rk for rk, _ in sda_messages(sda_env)] == ["error"]


def test_reupload_before_accession_replaces_the_archived_copy(sda_env: EgaEnv, gpg, pg_dsn: str) -> None:
    """The submitter uploads the path again before CEGA answered: the new content is ingested, the old
    copy leaves the vault, and the old row is disabled (an accession for it then matches nothing)."""
    first, _ = upload(sda_env, gpg, b"first version\n" * 100)
    assert run(sda_env, first)[0] == 0
    old_copy = sda_env.vault_files()
    second, _ = upload(sda_env, gpg, b"second version\n" * 100)
    assert second["encrypted_checksums"] != first["encrypted_checksums"]
    code, summary = run(sda_env, second)
    assert code == 0 and summary["state"] == "AWAITING_ACCESSION"
    assert len(sda_env.vault_files()) == 1 and sda_env.vault_files() != old_copy
    assert sorted(r["status"] for r in ega_row(pg_dsn, sda_env.user)) == ["awaiting_accession", "disabled"]
    code, refused = run(sda_env, accession_for(first, b"first version\n" * 100, new_accession_id()))
    assert code == 1 and "no verified upload" in refused["error"]
