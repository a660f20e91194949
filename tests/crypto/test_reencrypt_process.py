"""The byte pass in a child process (tasks.reencrypt_process): what the in-process pass gives, the same
errors with the same text, no Prefect or pgpy in the child, a small peak, and no child left behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from crypto_helpers import PASSPHRASE, file_digest, sample

from tasks.checksum import hash_file
from tasks.crypto import reencrypt
from tasks.errors import UserError
from tasks.reencrypt_process import (
    InProcessPass,
    PassOutcome,
    ReencryptProcess,
    child_env,
    open_byte_pass,
)

ROOT = Path(__file__).resolve().parents[2]


def in_child(archive_keys, encrypted: Path, out: Path, **kwargs) -> PassOutcome:
    with open(encrypted, "rb") as src, open(out, "wb") as dst, ReencryptProcess(src, dst) as byte_pass:
        return byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key, **kwargs)


def in_process(archive_keys, encrypted: Path, out: Path, **kwargs):
    with open(encrypted, "rb") as src, open(out, "wb") as dst:
        return reencrypt(src, dst, archive_keys.private_key, archive_keys.vault_public_key, **kwargs)


def error_of(call, *args, **kwargs) -> BaseException:
    try:
        call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - compared below
        return exc
    raise AssertionError("no error")


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, gpg):
    d = tmp_path_factory.mktemp("child-uploads")
    plain = sample(d / "reads.fastq", 2_500_000, compressible=True)
    return {
        "plain": plain,
        "fixed": gpg.encrypt(plain, d / "fixed.gpg", "--compress-algo", "none"),
        "piped-zlib": gpg.encrypt(plain, d / "piped.gpg", "--compress-algo", "zlib", stdin=True),
        "bzip2": gpg.encrypt(plain, d / "bzip2.gpg", "--compress-algo", "bzip2", "--cipher-algo", "AES128"),
        "signed": gpg.encrypt(plain, d / "signed.gpg", "--sign", "--local-user", gpg.submitter_key_id),
        "two-recipients": gpg.encrypt(plain, d / "two.gpg", recipients=(gpg.submitter_key_id, "EGA archive")),
        "hidden": gpg.encrypt(plain, d / "hidden.gpg", "--throw-keyids"),
    }


@pytest.mark.parametrize("name", ["fixed", "piped-zlib", "bzip2", "signed", "two-recipients", "hidden"])
def test_same_result_as_the_in_process_pass(tmp_path, archive_keys, uploads, c4gh_decrypt, name):
    progress: list[int] = []
    outcome = in_child(archive_keys, uploads[name], tmp_path / "child.c4gh", on_progress=progress.append)
    here = in_process(archive_keys, uploads[name], tmp_path / "here.c4gh")
    child = outcome.result
    for field in ("encrypted", "plaintext", "output_size", "session_key_sha256", "key_id", "cipher", "compression",
                  "literal_filename"):
        assert getattr(child, field) == getattr(here, field), field
    assert child.encrypted.size == uploads[name].stat().st_size
    assert child.output_sha256 == file_digest(tmp_path / "child.c4gh", "sha256")  # Crypt4GH output is randomised
    assert child.output_crc32c == hash_file(tmp_path / "child.c4gh", ("crc32c",)).checksums["crc32c"]
    assert c4gh_decrypt(tmp_path / "child.c4gh") == file_digest(uploads["plain"], "sha256")
    assert sum(progress) == uploads[name].stat().st_size  # every byte read reached the parent's progress
    assert 0 < outcome.peak_rss_mib < 64


def test_output_goes_after_what_the_file_already_holds(tmp_path, archive_keys, uploads, c4gh_decrypt):
    """The child writes at the staging file's offset, as the in-process pass would (and reads its
    source from the start although the parent read the envelope through the same fd)."""
    out = tmp_path / "out.c4gh"
    with open(uploads["fixed"], "rb") as src, open(out, "wb") as dst:
        dst.write(b"already here")
        with ReencryptProcess(src, dst) as byte_pass:
            result = byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key).result
    data = out.read_bytes()
    assert data.startswith(b"already here") and len(data) == len(b"already here") + result.output_size
    (tmp_path / "tail.c4gh").write_bytes(data[len(b"already here"):])
    assert c4gh_decrypt(tmp_path / "tail.c4gh") == file_digest(uploads["plain"], "sha256")


def _tampered(tmp_path: Path, source: Path, where: float) -> Path:
    data = bytearray(source.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path = tmp_path / "tampered.gpg"
    path.write_bytes(bytes(data))
    return path


def _truncated(tmp_path: Path, source: Path, keep: float) -> Path:
    data = source.read_bytes()
    path = tmp_path / "truncated.gpg"
    path.write_bytes(data[:int(len(data) * keep)])
    return path


@pytest.mark.parametrize("make", [
    pytest.param(lambda tmp, u: _tampered(tmp, u["fixed"], 0.5), id="tampered-mid"),  # in the child
    pytest.param(lambda tmp, u: _tampered(tmp, u["piped-zlib"], 0.6), id="tampered-compressed"),
    pytest.param(lambda tmp, u: _truncated(tmp, u["fixed"], 0.7), id="truncated"),
    pytest.param(lambda tmp, u: _truncated(tmp, u["fixed"], 0.0001), id="truncated-envelope"),  # in the parent
    pytest.param(lambda tmp, u: (tmp / "text").write_bytes(b"not encrypted\n") and tmp / "text", id="not-openpgp"),
])
def test_user_errors_are_the_same_user_errors(tmp_path, archive_keys, uploads, make):
    bad = make(tmp_path, uploads)
    child = error_of(in_child, archive_keys, bad, tmp_path / "a.c4gh")
    here = error_of(in_process, archive_keys, bad, tmp_path / "b.c4gh")
    assert isinstance(here, UserError) and type(child) is UserError
    assert (child.code, child.message) == (here.code, here.message)


def test_a_failing_write_is_the_same_system_error(tmp_path, archive_keys, uploads):
    """/dev/full: every write fails with ENOSPC, in the child as in this process."""
    def attempt(runner):
        with open(uploads["fixed"], "rb") as src, open("/dev/full", "wb") as dst:
            if runner == "child":
                with ReencryptProcess(src, dst) as byte_pass:
                    byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key)
            else:
                reencrypt(src, dst, archive_keys.private_key, archive_keys.vault_public_key)

    child, here = error_of(attempt, "child"), error_of(attempt, "here")
    assert not isinstance(child, UserError) and isinstance(child, OSError)
    assert (type(child), child.errno, str(child)) == (type(here), here.errno, str(here))
    assert f"{type(child).__name__}: {child}" == "OSError: [Errno 28] No space left on device"


def test_a_refused_session_key_stops_before_the_child_reads_a_byte(tmp_path, archive_keys, uploads):
    out = tmp_path / "out.c4gh"
    def refuse(session) -> None:
        raise UserError("session key already used")

    with open(uploads["fixed"], "rb") as src, open(out, "wb") as dst, pytest.raises(UserError, match="already used"), \
            ReencryptProcess(src, dst) as byte_pass:
        child = byte_pass.proc
        byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key, on_session_key=refuse)
    assert child.returncode is not None and out.read_bytes() == b""


def test_the_child_imports_neither_prefect_nor_pgpy():
    """What the child process imports, the way it is started (``-S``, our PYTHONPATH)."""
    probe = textwrap.dedent("""
        import sys, tasks.reencrypt_child, tasks.crypto, tasks.openpgp, tasks.c4gh, tasks.checksum
        print(" ".join(sorted(sys.modules)))
    """)
    proc = subprocess.run([sys.executable, "-S", "-c", probe], env=child_env(), cwd=ROOT, capture_output=True,
                          text=True, check=True)
    modules = proc.stdout.split()
    assert "cryptography" in modules and "tasks.crypto" in modules
    heavy = [m for m in modules if m.split(".")[0] in ("prefect", "pgpy", "pydantic", "sqlalchemy", "psycopg",
                                                         "boto3", "flows", "blocks")]
    assert heavy == []


# A parent that runs the pass and reports its child's pid, then waits to be killed.
_PARENT = textwrap.dedent("""
    import json, signal, sys
    sys.path.insert(0, {root!r})
    from tasks.keys import load_c4gh_public_key, load_pgp_private_key
    from tasks.reencrypt_process import ReencryptProcess

    class Stop(BaseException):
        pass

    def stop(*_):
        raise Stop()  # what Prefect's SIGTERM bridge does: an exception in the main thread

    signal.signal(signal.SIGTERM, stop)
    src, out, sec, pub = sys.argv[1:5]
    key = load_pgp_private_key(open(sec).read(), {passphrase!r})
    tmp = out + ".part"
    try:
        with open(src, "rb") as raw, open(tmp, "wb") as dst, ReencryptProcess(raw, dst) as byte_pass:
            print(json.dumps({{"child": byte_pass.proc.pid}}), flush=True)
            byte_pass.run(key, load_c4gh_public_key(pub), block_size=64 << 10,
                          on_progress=lambda n: print(json.dumps({{"progress": n}}), flush=True))
    except Stop:
        import os
        os.unlink(tmp)
        print(json.dumps({{"stopped": True}}), flush=True)
        sys.exit(143)
""")


@pytest.fixture(scope="module")
def big_upload(tmp_path_factory, gpg):
    """Large enough that the pass is still running when the parent is stopped."""
    d = tmp_path_factory.mktemp("big")
    plain = d / "big.bin"
    with open(plain, "wb") as fh:
        fh.writelines(os.urandom(1 << 20) for _ in range(384))
    encrypted = gpg.encrypt(plain, d / "big.gpg", "--compress-algo", "none")
    plain.unlink()
    return encrypted


def _start_parent(tmp_path, archive_keys, big_upload) -> tuple[subprocess.Popen, int]:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT.format(root=str(ROOT), passphrase=PASSPHRASE))
    parent = subprocess.Popen([sys.executable, str(script), str(big_upload), str(tmp_path / "out.c4gh"),
                               str(archive_keys.pgp_sec), str(archive_keys.c4gh_pub)],
                              stdout=subprocess.PIPE, text=True)
    child = json.loads(parent.stdout.readline())["child"]
    assert "progress" in json.loads(parent.stdout.readline())  # the pass is under way
    return parent, child


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_sigterm_to_the_parent_kills_the_pass_at_once(tmp_path, archive_keys, big_upload):
    parent, child = _start_parent(tmp_path, archive_keys, big_upload)
    started = time.monotonic()
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 143
    assert time.monotonic() - started < 2, "the parent waited for the pass"
    assert _gone(child, 1)
    assert list(tmp_path.glob("out.c4gh*")) == []


def test_a_parent_killed_outright_takes_the_child_with_it(tmp_path, archive_keys, big_upload):
    parent, child = _start_parent(tmp_path, archive_keys, big_upload)
    parent.kill()
    parent.wait(timeout=30)
    assert _gone(child, 1), "the byte pass outlived its parent"


def test_still_wanted_calls_the_pass_off_mid_way(tmp_path, archive_keys, big_upload, monkeypatch):
    import tasks.reencrypt_process as rp

    monkeypatch.setattr(rp, "CHECK_SECONDS", 0.2)
    asked, read = [], []

    def still_wanted() -> None:
        asked.append(time.monotonic())
        if sum(read) > (16 << 20):
            raise UserError("cancelled during the decrypt pass")

    out = tmp_path / "out.c4gh"
    with open(big_upload, "rb") as src, open(out, "wb") as dst, pytest.raises(UserError, match="cancelled"), \
            ReencryptProcess(src, dst) as byte_pass:
        child = byte_pass.proc
        byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key, block_size=64 << 10,
                      on_progress=read.append, still_wanted=still_wanted)
    assert child.returncode is not None  # killed on the way out, not left to finish
    assert len(asked) >= 2 and sum(read) < big_upload.stat().st_size


def test_small_uploads_stay_in_this_process_with_the_same_results(tmp_path, archive_keys, uploads, monkeypatch,
                                                                   c4gh_decrypt):
    size = uploads["fixed"].stat().st_size
    monkeypatch.setenv("INGEST_BYTE_PASS_CHILD_MIN_BYTES", str(size + 1))
    progress: list[int] = []
    with open(uploads["fixed"], "rb") as src, open(tmp_path / "here.c4gh", "wb") as dst, \
            open_byte_pass(src, dst) as byte_pass:
        assert isinstance(byte_pass, InProcessPass)
        here = byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key, on_progress=progress.append)
    assert here.peak_rss_mib is None and sum(progress) == size
    assert c4gh_decrypt(tmp_path / "here.c4gh") == file_digest(uploads["plain"], "sha256")
    monkeypatch.setenv("INGEST_BYTE_PASS_CHILD_MIN_BYTES", str(size))
    with open(uploads["fixed"], "rb") as src, open(tmp_path / "child.c4gh", "wb") as dst, \
            open_byte_pass(src, dst) as byte_pass:
        assert isinstance(byte_pass, ReencryptProcess)
        child = byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key)
    assert (child.result.plaintext, child.result.encrypted) == (here.result.plaintext, here.result.encrypted)
    monkeypatch.delenv("INGEST_BYTE_PASS_CHILD_MIN_BYTES")
    with open(uploads["fixed"], "rb") as src, open(tmp_path / "x.c4gh", "wb") as dst, \
            open_byte_pass(src, dst) as byte_pass:
        assert isinstance(byte_pass, InProcessPass)  # the default: a child from 1 GiB


def test_a_child_that_reported_exits_by_itself(tmp_path, archive_keys, uploads):
    with open(uploads["fixed"], "rb") as src, open(tmp_path / "out.c4gh", "wb") as dst:
        with ReencryptProcess(src, dst) as byte_pass:
            byte_pass.run(archive_keys.private_key, archive_keys.vault_public_key)
        assert byte_pass.proc.returncode == 0  # its own exit, not a kill
