"""The vault contract, run against both backends: a directory and moto's S3 server over HTTP."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

import tasks.vault as vault_module
from tasks.checksum import hash_file
from tasks.errors import UserError, is_user_error
from tasks.vault import (
    S3_MIN_PART,
    TEMP_PREFIX,
    FilesystemVault,
    S3Vault,
    Vault,
    VaultError,
    VaultVerifyError,
    vault_from_uri,
)

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def _s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(params=["fs", pytest.param("s3", marks=pytest.mark.integration)])
def backend(request, tmp_path: Path):
    """(kind, vault, raw) where raw is the vault root (fs) or (client, bucket) (s3)."""
    if request.param == "fs":
        root = tmp_path / "vault"
        return "fs", FilesystemVault(root), root
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    client = _s3_client(endpoint)
    vault = S3Vault.from_boto_client(client, bucket, prefix="archive", part_size=S3_MIN_PART)
    return "s3", vault, (client, bucket)


def _payload(n: int, seed: int = 0) -> bytes:
    # Deterministic but not repetitive, so a wrong part order would change the digest.
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


class FailingStream(io.RawIOBase):
    """A source that dies after ``fail_after`` bytes, like a dropped network read."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._fail_after = fail_after

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._pos >= self._fail_after:
            raise OSError("source connection reset")
        n = min(len(buffer), self._fail_after - self._pos, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


class Trickle:
    """Only ``read()``, never more than ``chunk`` bytes at a time: a socket or a pipe as a file."""

    def __init__(self, data: bytes, chunk: int = 100_000, none_at: int | None = None) -> None:
        self._data = data
        self._pos = 0
        self._chunk = chunk
        self._none_at = none_at  # emulate a non-blocking source that has nothing yet

    def read(self, n: int = -1) -> bytes | None:
        if self._none_at is not None and self._pos >= self._none_at:
            return None
        n = self._chunk if n < 0 else min(n, self._chunk)
        out = self._data[self._pos:self._pos + n]
        self._pos += len(out)
        return out


def _fs_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _pending_uploads(raw) -> list:
    client, bucket = raw
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# ------------------------------------------------------------------ put / verify / re-put


def test_put_verify_and_reput_same_key(backend) -> None:
    kind, vault, raw = backend
    first = _payload(300_000, seed=1)
    res = vault.put_stream("ega/EGAF1/file.c4gh", io.BytesIO(first), algorithms=("sha256", "md5"))
    assert res.size == len(first)
    assert res.checksums == {"sha256": hashlib.sha256(first).hexdigest(), "md5": hashlib.md5(first).hexdigest()}
    assert res.uri == vault.uri("ega/EGAF1/file.c4gh")
    assert vault.exists("ega/EGAF1/file.c4gh") and vault.stat("ega/EGAF1/file.c4gh") == len(first)
    ok = vault.verify("ega/EGAF1/file.c4gh", size=len(first), sha256=res.checksums["sha256"],
                      checksums={"MD5": res.checksums["md5"]})
    assert ok.checksums["md5"] == res.checksums["md5"]

    second = _payload(123_457, seed=2)
    res2 = vault.put_stream("ega/EGAF1/file.c4gh", io.BytesIO(second))
    assert list(vault.list("ega/")) == ["ega/EGAF1/file.c4gh"]
    with vault.open_read("ega/EGAF1/file.c4gh") as fh:
        assert fh.read() == second
    vault.verify("ega/EGAF1/file.c4gh", size=len(second), sha256=res2.checksums["sha256"])
    with pytest.raises(VaultVerifyError):
        vault.verify("ega/EGAF1/file.c4gh", size=len(second), sha256=res.checksums["sha256"])
    if kind == "fs":
        assert _fs_files(raw) == ["ega/EGAF1/file.c4gh"]
    else:
        client, bucket = raw
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert keys == ["archive/ega/EGAF1/file.c4gh"]


def test_put_file_and_empty_object(backend, tmp_path: Path) -> None:
    _, vault, _ = backend
    src = tmp_path / "src.bin"
    src.write_bytes(_payload(70_000))
    res = vault.put_file("a/src.bin", src, algorithms=("sha-256", "crc32c"))
    assert set(res.checksums) == {"sha256", "crc32c"}
    vault.verify("a/src.bin", size=70_000, checksums=res.checksums)

    empty = vault.put_stream("a/empty", io.BytesIO(b""))
    assert empty.size == 0 and empty.checksums["sha256"] == hashlib.sha256(b"").hexdigest()
    assert vault.stat("a/empty") == 0
    vault.verify("a/empty", size=0, sha256=empty.checksums["sha256"])


def test_verify_without_checksum_still_reads_back(backend) -> None:
    _, vault, _ = backend
    data = _payload(10_000)
    vault.put_stream("k", io.BytesIO(data), algorithms=("md5",))
    result = vault.verify("k", size=len(data))
    assert result.checksums == {"sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("size", [250_000, 11 * MiB + 3], ids=["small", "multipart"])
def test_read_only_source_with_short_reads(backend, size: int) -> None:
    kind, vault, raw = backend
    data = _payload(size, seed=size)
    res = vault.put_stream("t/trickle", Trickle(data), algorithms=("sha256", "md5"))
    assert res.size == size and res.checksums["md5"] == hashlib.md5(data).hexdigest()
    with vault.open_read("t/trickle") as fh:
        assert fh.read() == data
    if kind == "s3" and size > S3_MIN_PART:
        client, bucket = raw
        etag = client.head_object(Bucket=bucket, Key="archive/t/trickle")["ETag"].strip('"')
        assert etag.endswith("-3")  # full 5 MiB parts despite 100 kB reads: 5 + 5 + 1 MiB


@pytest.mark.parametrize("none_at", [0, 300_000, 6 * MiB], ids=["at-start", "mid-first-part", "mid-multipart"])
def test_non_blocking_source_is_refused_not_truncated(backend, none_at: int) -> None:
    kind, vault, raw = backend
    with pytest.raises(VaultError, match="non-blocking"):
        vault.put_stream("nb/obj", Trickle(_payload(12 * MiB), none_at=none_at))
    assert not vault.exists("nb/obj")
    if kind == "fs":
        assert _fs_files(raw) == []
    else:
        assert _pending_uploads(raw) == []


# ------------------------------------------------------------------ integrity failures


def test_corrupted_object_fails_verify(backend) -> None:
    kind, vault, raw = backend
    data = _payload(200_000)
    res = vault.put_stream("bag/data/x.fits", io.BytesIO(data), algorithms=("sha256", "md5"))
    corrupt = bytearray(data)
    corrupt[150_001] ^= 0x01
    if kind == "fs":
        path = raw / "bag/data/x.fits"
        with open(path, "r+b") as fh:
            fh.seek(150_001)
            fh.write(bytes([corrupt[150_001]]))
    else:
        client, bucket = raw
        client.put_object(Bucket=bucket, Key="archive/bag/data/x.fits", Body=bytes(corrupt))
    assert vault.stat("bag/data/x.fits") == len(data)  # same size: only the read-back can tell
    with pytest.raises(VaultVerifyError, match="checksum mismatch") as info:
        vault.verify("bag/data/x.fits", size=len(data), checksums=res.checksums)
    err = info.value
    assert not isinstance(err, UserError) and not is_user_error(err)
    assert set(err.actual) == {"sha256", "md5"} and err.actual["sha256"] == hashlib.sha256(corrupt).hexdigest()
    assert err.uri == vault.uri("bag/data/x.fits")


def test_verify_size_mismatch_and_missing(backend) -> None:
    _, vault, _ = backend
    data = _payload(5000)
    res = vault.put_stream("s", io.BytesIO(data))
    with pytest.raises(VaultVerifyError, match="size is 5000, expected 5001"):
        vault.verify("s", size=5001, sha256=res.checksums["sha256"])
    with pytest.raises(VaultVerifyError, match="missing"):
        vault.verify("nope", size=1, sha256=res.checksums["sha256"])


# ------------------------------------------------------------------ failure leaves nothing


@pytest.mark.parametrize("size,fail_after", [(3 * MiB, 1 * MiB), (14 * MiB, 11 * MiB)],
                         ids=["single-put", "multipart"])
def test_source_error_mid_put_leaves_nothing(backend, size: int, fail_after: int) -> None:
    kind, vault, raw = backend
    vault.put_stream("keep/me", io.BytesIO(b"unrelated"))
    with pytest.raises(OSError, match="connection reset"):
        vault.put_stream("obj/broken", io.BufferedReader(FailingStream(_payload(size), fail_after)))
    assert not vault.exists("obj/broken")
    assert list(vault.list()) == ["keep/me"]
    if kind == "fs":
        assert _fs_files(raw) == ["keep/me"]  # the temp file was removed, not just hidden
    else:
        assert _pending_uploads(raw) == []


_KILL_CHILD = r"""
import sys
from tasks.vault import FilesystemVault, S3Vault, S3_MIN_PART
kind, where, key = sys.argv[1:4]
if kind == "fs":
    vault = FilesystemVault(where)
else:
    endpoint, bucket = where.split("|")
    vault = S3Vault(bucket, endpoint_url=endpoint, region="us-east-1", prefix="archive", part_size=S3_MIN_PART)
vault.put_stream(key, sys.stdin.buffer)
print("finished", flush=True)
"""


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_killed_put_leaves_no_object(backend) -> None:
    kind, vault, raw = backend
    key = "inflight/big.bin"
    where = str(raw) if kind == "fs" else f"{vault.client.meta.endpoint_url}|{raw[1]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, kind, where, key], cwd=REPO, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        # More than one block/part, then the pipe stays open: the child is mid-stream, blocked on read.
        child.stdin.write(_payload(6 * MiB))
        child.stdin.flush()
        if kind == "fs":
            _wait_for(lambda: any(p.stat().st_size >= 4 * MiB for p in raw.rglob(f"{TEMP_PREFIX}*")))
        else:
            client, bucket = raw

            def one_part_stored() -> bool:
                uploads = _pending_uploads(raw)
                return bool(uploads) and bool(client.list_parts(
                    Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]).get("Parts"))
            _wait_for(one_part_stored)
        assert child.poll() is None, "the put must still be streaming when it is killed"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()

    assert not vault.exists(key) and vault.stat(key) is None
    assert list(vault.list()) == []
    if kind == "fs":
        leftovers = _fs_files(raw)
        assert leftovers and all(Path(f).name.startswith(TEMP_PREFIX) for f in leftovers)
    else:
        assert [u["Key"] for u in _pending_uploads(raw)] == ["archive/inflight/big.bin"]
    if kind == "fs":  # moto reports every upload as initiated in 2010, so age is only testable on disk
        assert vault.cleanup_incomplete(older_than=3600) == 0  # a fresh leftover may be a live put: kept
    assert vault.cleanup_incomplete(older_than=0) == 1
    if kind == "fs":
        assert _fs_files(raw) == []
    else:
        assert _pending_uploads(raw) == []
    # A retry after the crash simply writes the object.
    data = _payload(1000)
    vault.put_stream(key, io.BytesIO(data))
    vault.verify(key, size=1000, sha256=hashlib.sha256(data).hexdigest())


# ------------------------------------------------------------------ multipart (S3)


@pytest.mark.integration
def test_s3_multipart_with_small_parts(s3_endpoint: str, s3_bucket: str) -> None:
    client = _s3_client(s3_endpoint)
    vault = S3Vault(s3_bucket, endpoint_url=s3_endpoint, region="us-east-1", part_size=S3_MIN_PART,
                    max_concurrency=2)
    data = _payload(12 * MiB, seed=7)
    # A pipe-like source that returns short reads: parts must still be full-sized.
    stream = io.BufferedReader(FailingStream(data, fail_after=len(data) + 1), buffer_size=64 * 1024)
    res = vault.put_stream("cubes/big.fits", stream, algorithms=("sha256", "md5", "sha1"))
    assert res.size == len(data)
    assert res.checksums == {a: hashlib.new(a, data).hexdigest() for a in ("sha256", "md5", "sha1")}
    head = client.head_object(Bucket=s3_bucket, Key="cubes/big.fits")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 2 MiB: really multipart
    vault.verify("cubes/big.fits", size=len(data), checksums=res.checksums)
    with vault.open_read("cubes/big.fits") as fh:
        assert fh.read(3 * MiB + 17) == data[:3 * MiB + 17]  # read(n) returns n, across chunks
        assert fh.read() == data[3 * MiB + 17:]
    assert _pending_uploads((client, s3_bucket)) == []


@pytest.mark.integration
def test_s3_from_prefect_block_shape(s3_endpoint: str, s3_bucket: str) -> None:
    from prefect_aws import AwsCredentials, S3Bucket

    creds = AwsCredentials(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1",
                           aws_client_parameters={"endpoint_url": s3_endpoint})
    vault = S3Vault.from_s3_bucket(S3Bucket(bucket_name=s3_bucket, credentials=creds, bucket_folder="vault/"))
    vault.put_stream("x/y", io.BytesIO(b"hello"))
    assert vault.uri("x/y") == f"s3://{s3_bucket}/vault/x/y"
    assert _s3_client(s3_endpoint).get_object(Bucket=s3_bucket, Key="vault/x/y")["Body"].read() == b"hello"


def test_s3_part_size_floor() -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3Vault("b", client=object(), part_size=S3_MIN_PART - 1)


# ------------------------------------------------------------------ keys, listing, URIs


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../../x", "a/..", "", "a//b", "a/./b", "a/",
                                 "a\nb", f"d/{TEMP_PREFIX}123", "x" * 256])
def test_key_validation_refuses(backend, bad: str) -> None:
    _, vault, _ = backend
    for call in (lambda: vault.put_stream(bad, io.BytesIO(b"x")), lambda: vault.stat(bad),
                 lambda: vault.delete(bad), lambda: vault.uri(bad)):
        with pytest.raises(UserError):
            call()
    assert list(vault.list()) == []


def test_fs_symlink_out_of_root_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    vault = FilesystemVault(tmp_path / "vault")
    os.symlink(outside, tmp_path / "vault" / "escape")
    with pytest.raises(UserError, match="outside"):
        vault.put_stream("escape/x", io.BytesIO(b"x"))
    assert list(outside.iterdir()) == []


def test_list_prefix_is_a_string_prefix_and_delete_is_idempotent(backend) -> None:
    _, vault, _ = backend
    for key in ["a/1", "a/2/x", "a-b", "ab", "b/1"]:
        vault.put_stream(key, io.BytesIO(key.encode()))
    assert list(vault.list()) == ["a-b", "a/1", "a/2/x", "ab", "b/1"]
    assert list(vault.list("a/")) == ["a/1", "a/2/x"]
    assert list(vault.list("a")) == ["a-b", "a/1", "a/2/x", "ab"]
    assert list(vault.list("a/2/")) == ["a/2/x"]
    assert list(vault.list("zz/")) == []
    assert not vault.exists("a") and vault.stat("a/2") is None  # prefixes are not objects
    vault.delete("a/1")
    vault.delete("a/1")
    vault.delete("never/existed")
    assert list(vault.list("a/")) == ["a/2/x"]
    with pytest.raises(FileNotFoundError):
        vault.open_read("a/1")
    with pytest.raises(UserError):
        list(vault.list("../"))


def test_uri_round_trip(backend) -> None:
    kind, vault, raw = backend
    res = vault.put_stream("dir/name with space.txt", io.BytesIO(b"payload"))
    if kind == "fs":
        assert res.uri.startswith("file:///") and "%20" in res.uri
        again, key = vault_from_uri(res.uri, fs_root=raw)
        assert key == "dir/name with space.txt"
        other, name = vault_from_uri(res.uri)
        assert name == "name with space.txt"
        with other.open_read(name) as fh:
            assert fh.read() == b"payload"
        with pytest.raises(UserError):
            vault_from_uri(res.uri, fs_root=raw / "dir" / "sub")
    else:
        assert res.uri == f"s3://{raw[1]}/archive/dir/name with space.txt"
        again, key = vault_from_uri(res.uri, client=raw[0])
        assert key == "archive/dir/name with space.txt"
    with again.open_read(key) as fh:
        assert fh.read() == b"payload"
    assert isinstance(again, Vault)
    with pytest.raises(UserError):
        vault_from_uri("ftp://host/x")


def test_move_in_checks_and_consumes_the_staged_file(backend, tmp_path: Path) -> None:
    data = _payload(3 * MiB + 5, seed=7)
    staged = tmp_path / "staged.c4gh"
    staged.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    _, vault, _ = backend
    put = vault.move_in("ega/X/obj.c4gh", staged, size=len(data), sha256=sha)
    assert put.size == len(data) and put.checksums["sha256"] == sha and not staged.exists()
    assert vault.verify("ega/X/obj.c4gh", size=len(data), sha256=sha).checksums["sha256"] == sha
    with vault.open_read("ega/X/obj.c4gh") as fh:
        assert fh.read() == data
    staged.write_bytes(data[:-1] + b"!")  # not what the pass hashed
    if isinstance(vault, S3Vault):  # no rename there: the copy is hashed and refused
        with pytest.raises(VaultError, match="differs from the staged file"):
            vault.move_in("ega/Y/obj.c4gh", staged, size=len(data), sha256=sha)
        assert not vault.exists("ega/Y/obj.c4gh")
    else:  # a rename keeps the bytes: the verifying read is what catches it
        vault.move_in("ega/Y/obj.c4gh", staged, size=len(data), sha256=sha)
        with pytest.raises(VaultVerifyError, match="checksum mismatch"):
            vault.verify("ega/Y/obj.c4gh", size=len(data), sha256=sha)


def test_move_in_verified_stores_only_what_reads_back_right(backend, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The EGA archive step's one call: the staged file becomes the object and is read back once; a
    staged file that is not what the pass hashed never becomes an object (none is left under the key)."""
    data = _payload(3 * MiB + 5, seed=11)
    sha = hashlib.sha256(data).hexdigest()
    staged = tmp_path / "staged.c4gh"
    _, vault, _ = backend
    staged.write_bytes(data)
    put = vault.move_in_verified("ega/V/obj.c4gh", staged, size=len(data), sha256=sha)
    assert put.checksums["sha256"] == sha and not staged.exists()
    with vault.open_read("ega/V/obj.c4gh") as fh:
        assert fh.read() == data
    staged.write_bytes(data[:-1] + b"!")
    with pytest.raises(VaultError):
        vault.move_in_verified("ega/W/obj.c4gh", staged, size=len(data), sha256=sha)
    assert not vault.exists("ega/W/obj.c4gh")
    staged.write_bytes(data[:-1])
    with pytest.raises(VaultError):
        vault.move_in_verified("ega/W/obj.c4gh", staged, size=len(data), sha256=sha)
    assert not vault.exists("ega/W/obj.c4gh")
    # with the pass's CRC32C of what it wrote, the read-back compares that (the sha256 is recorded as given)
    staged.write_bytes(data)
    crc = hash_file(staged, ("crc32c",)).checksums["crc32c"]
    hashed: list[list[str]] = []
    real = vault_module.MultiHasher
    monkeypatch.setattr(vault_module, "MultiHasher", lambda algorithms: hashed.append(list(algorithms)) or real(algorithms))
    put = vault.move_in_verified("ega/C/obj.c4gh", staged, size=len(data), sha256=sha, crc32c=crc)
    assert put.size == len(data) and put.checksums["sha256"] == sha
    assert hashed and all(a == ["crc32c"] for a in hashed), hashed  # no second sha256, in the copy or the read
    monkeypatch.undo()
    staged.write_bytes(data[:-1] + b"!")
    with pytest.raises(VaultError, match="crc32c|differs from the staged file"):  # (S3: the copy sees it)
        vault.move_in_verified("ega/D/obj.c4gh", staged, size=len(data), sha256=sha, crc32c=crc)
    assert not vault.exists("ega/D/obj.c4gh")


def test_move_in_verified_fsyncs_the_file_before_it_appears(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the vault's filesystem the staged file (written without fsync) is fsynced, then renamed."""
    from tasks import vault as vault_module
    from tasks.vault import FilesystemVault

    vault = FilesystemVault(tmp_path / "vault")
    staged = tmp_path / "staging" / "x.c4gh"
    staged.parent.mkdir()
    staged.write_bytes(b"crypt4gh bytes")
    inode = staged.stat().st_ino
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(vault_module.os, "fsync", lambda fd: order.append(("fsync", os.fstat(fd).st_ino))
                        or real_fsync(fd))
    monkeypatch.setattr(vault_module.os, "replace", lambda a, b: order.append(("rename", None)) or real_replace(a, b))
    vault.move_in_verified("ega/E/x.c4gh", staged, size=14, sha256=hashlib.sha256(b"crypt4gh bytes").hexdigest())
    assert order.index(("fsync", inode)) < order.index(("rename", None))
    assert vault.path("ega/E/x.c4gh").stat().st_ino == inode and not staged.exists()


def test_move_in_on_the_vault_filesystem_is_a_rename(tmp_path: Path) -> None:
    from tasks.vault import FilesystemVault

    vault = FilesystemVault(tmp_path / "vault")
    staged = tmp_path / "staging" / "x.c4gh"
    staged.parent.mkdir()
    staged.write_bytes(b"crypt4gh bytes")
    inode = staged.stat().st_ino
    vault.move_in("ega/E/x.c4gh", staged, size=14, sha256=hashlib.sha256(b"crypt4gh bytes").hexdigest())
    assert vault.path("ega/E/x.c4gh").stat().st_ino == inode  # the same file: no copy was written
    assert not staged.exists() and len(_fs_files(tmp_path / "vault")) == 1


def test_move_in_across_filesystems_copies_and_checks(tmp_path: Path) -> None:
    """A vault on another filesystem (a tmpfs here) gets a hashed copy; a staged file that does not match
    what the pass computed is refused and leaves no object."""
    import subprocess

    from tasks.vault import FilesystemVault, VaultError

    other = tmp_path / "tmpfs"
    other.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(other)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root): no second filesystem to copy across")
    try:
        vault = FilesystemVault(other / "vault")
        data = _payload(MiB, seed=3)
        staged = tmp_path / "a.c4gh"
        staged.write_bytes(data)
        inode = staged.stat().st_ino
        vault.move_in("ega/A/a.c4gh", staged, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        assert vault.path("ega/A/a.c4gh").read_bytes() == data and not staged.exists()
        assert vault.path("ega/A/a.c4gh").stat().st_ino != inode
        staged.write_bytes(data)
        with pytest.raises(VaultError, match="differs from the staged file"):
            vault.move_in("ega/B/b.c4gh", staged, size=len(data), sha256="0" * 64)
        assert not vault.exists("ega/B/b.c4gh") and staged.exists()
    finally:
        subprocess.run(["umount", str(other)], check=False)


def test_write_behind_writes_a_long_file_out_as_it_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EGA's staged file is not fsynced at its end (the vault's move does that): while it is written,
    its pages are written out every interval, so that last fsync is short."""
    from tasks import staging

    synced = []
    real = os.fdatasync
    monkeypatch.setattr(staging.os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_size) or real(fd))
    with open(tmp_path / "long.c4gh", "wb") as fh, staging.write_behind(fh, interval=0.05):
        for _ in range(8):
            fh.write(b"x" * MiB)
            fh.flush()
            time.sleep(0.06)
    assert len(synced) >= 3 and synced == sorted(synced) and synced[-1] > synced[0]
