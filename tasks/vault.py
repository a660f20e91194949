"""The vault: where finished objects live, on a local directory or any S3 endpoint.

Both backends share one contract, because a flow must not care where bytes go:

* ``put_stream`` reads the source once, in fixed-size blocks, hashing exactly the
  bytes it stores; memory is bounded by the block/part size, never by the object.
* A put is all-or-nothing under its final key. The filesystem writes a hidden
  temp file in the same directory, fsyncs it and renames it over the key; S3
  either lands a single PUT or completes a multipart upload. A retried put to the
  same key replaces the object (on a versioned bucket S3 keeps the old version:
  that is the bucket's policy, not a second copy made by us).
* A killed put (SIGKILL, OOM) cannot run cleanup code. What it leaves is never
  visible under a key: on disk a ``.vault-tmp-*`` file that ``list`` skips and
  ``exists`` does not see; on S3 an incomplete multipart upload, which is not an
  object. ``cleanup_incomplete`` removes both kinds once they are old enough
  (a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` does the same on S3).
* ``verify`` never trusts metadata for content: it checks the size, then reads
  the object back and hashes it. A mismatch is a ``VaultVerifyError`` — storage
  lost integrity, which is a system failure (retryable, alarming), never the
  submitter's fault, so it is deliberately not a ``UserError``.

Keys are relative POSIX names (``a/b/c``) checked lexically on both backends, so
a key that works on one works on the other and never escapes the root or prefix.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from tasks.checksum import BLOCK_SIZE, MultiHasher, normalize_algorithm
from tasks.errors import UserError
from tasks.staging import check_relative_name, confine

log = logging.getLogger(__name__)

TEMP_PREFIX = ".vault-tmp-"  # reserved: no key segment may start with it, list() never returns it
TEMP_NAME_CHARS = 100  # of the key's last segment kept in a temporary's name (NAME_MAX is 255)
MAX_KEY_BYTES = 1024  # S3's limit; enforced on disk too so keys stay portable
MAX_SEGMENT_BYTES = 255  # NAME_MAX on every filesystem we run on
S3_MIN_PART = 5 << 20  # S3 (and moto) refuse smaller non-last parts
S3_MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 << 20  # as boto3; with 8 in flight, 64 MiB per put whatever the object size
DEFAULT_CONCURRENCY = 8


def temp_name(key_name: str) -> str:
    """A filesystem put's temporary: ``.vault-tmp-<32 hex>-<key name>``. The key's name lets the next
    attempt at the same key find what a killed put left (``is_temp_of``) without touching other puts'."""
    return f"{TEMP_PREFIX}{uuid.uuid4().hex}-{key_name[:TEMP_NAME_CHARS]}"


def is_temp_of(name: str, key_name: str) -> bool:
    """Whether ``name`` (a directory entry) is a temporary of a put to a key whose last segment is ``key_name``."""
    return name.startswith(TEMP_PREFIX) and name[len(TEMP_PREFIX) + 33:] == key_name[:TEMP_NAME_CHARS]


class VaultError(Exception):
    """Storage-side failure: transient or integrity, never the submitter's input."""


class VaultVerifyError(VaultError):
    """The stored object is missing, or its size or a checksum differs from the record."""

    def __init__(self, message: str, *, key: str, uri: str,
                 expected: dict[str, Any] | None = None, actual: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.uri = uri
        self.expected = expected or {}
        self.actual = actual or {}


@dataclass(frozen=True)
class PutResult:
    key: str
    uri: str
    size: int
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyResult:
    key: str
    uri: str
    size: int
    checksums: dict[str, str] = field(default_factory=dict)


def check_key(key: str) -> str:
    """Refuse any key that is not a plain relative POSIX name, identically on both backends."""
    check_relative_name(key, what="vault key", max_length=MAX_KEY_BYTES)
    for segment in key.split("/"):
        if segment in ("", "."):
            raise UserError(f"vault key {key!r} has an empty or '.' segment")
        if len(segment.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
            raise UserError(f"vault key {key!r} has a segment longer than {MAX_SEGMENT_BYTES} bytes")
        if segment.startswith(TEMP_PREFIX):
            raise UserError(f"vault key {key!r} uses the reserved prefix {TEMP_PREFIX!r}")
    return key


def _check_expected(hasher: MultiHasher, expect: dict[str, str] | None, what: str) -> None:
    if not expect:
        return
    actual = hasher.hexdigests()
    bad = {a: actual.get(a) for a, v in expect.items() if actual.get(a) != v}
    if bad:
        raise VaultError(f"{what} differs from the staged file while writing: "
                         + ", ".join(f"{a} {bad[a]} != expected {expect[a]}" for a in bad))


def _check_list_prefix(prefix: str) -> str:
    """A list prefix is a string prefix (S3 semantics), so it may end in '/' or mid-name."""
    if prefix:
        check_relative_name(prefix, what="vault prefix", max_length=MAX_KEY_BYTES)
    return prefix


def _algorithms(algorithms: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(normalize_algorithm(a) for a in algorithms))


def _expected_checksums(sha256: str | None, checksums: dict[str, str] | None) -> dict[str, str]:
    expected = {normalize_algorithm(a): v.strip().lower() for a, v in (checksums or {}).items()}
    if sha256 is not None:
        if expected.get("sha256", sha256.lower()) != sha256.lower():
            raise ValueError("sha256= and checksums['sha256'] disagree")
        expected["sha256"] = sha256.strip().lower()
    return expected


class Vault(ABC):
    """The interface every flow calls; backends differ only in where the bytes land."""

    @abstractmethod
    def put_stream(self, key: str, stream: BinaryIO, *, size_hint: int | None = None,
                   algorithms: Iterable[str] = ("sha256",), expect: dict[str, str] | None = None) -> PutResult:
        """Store ``stream`` under ``key`` atomically. With ``expect`` ({algorithm: hex}), bytes that hash
        otherwise never become the object: the put fails (VaultError) before it is published."""

    @abstractmethod
    def stat(self, key: str) -> int | None:
        """Size in bytes, or None when there is no object under ``key``."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A readable binary file (usable as a context manager); FileNotFoundError if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error (rollback may run twice)."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (a string prefix, as on S3), in lexicographic order."""

    @abstractmethod
    def cleanup_incomplete(self, older_than: float = 24 * 3600) -> int:
        """Remove what killed puts left behind (older than ``older_than`` seconds); return the count."""

    def put_file(self, key: str, path: str | Path, *, algorithms: Iterable[str] = ("sha256",),
                 expect: dict[str, str] | None = None) -> PutResult:
        with open(path, "rb", buffering=0) as fh:
            return self.put_stream(key, fh, size_hint=os.fstat(fh.fileno()).st_size, algorithms=algorithms,
                                   expect=expect)

    def move_in(self, key: str, path: str | Path, *, size: int, sha256: str, crc32c: str | None = None) -> PutResult:
        """Put a staged file whose size and sha256 the caller already knows; the staged file is gone after.

        Here: a copy that hashes as it goes and must match: the CRC32C the decrypt pass computed of the
        bytes it wrote, when given (~20 GB/s, where a second sha256 costs 0.35 CPU-s per 512 MiB), else
        the sha256. A backend that can do better (a rename on the same filesystem) overrides it. Either
        way the caller still verifies by reading back.
        """
        algorithm, expected = _staged_check(sha256, crc32c)
        put = self.put_file(key, path, algorithms=(algorithm,), expect={algorithm: expected})
        if put.size != size:
            self.delete(key)
            raise VaultError(f"copy of {Path(path).name} into {put.uri} has {put.size} bytes, expected {size}")
        Path(path).unlink(missing_ok=True)
        return PutResult(put.key, put.uri, put.size, {**put.checksums, "sha256": sha256})

    def move_in_verified(self, key: str, path: str | Path, *, size: int, sha256: str,
                         crc32c: str | None = None) -> PutResult:
        """``move_in``, then the one verifying read; a copy that fails it is deleted.

        The read-back compares the CRC32C the decrypt pass computed of the bytes it wrote, when given
        (the sha256 recorded is the pass's too; a read-back that matches the CRC is those bytes), else
        the sha256. The staged file need not be durable yet: what is stored is made durable here, before
        this returns (a filesystem vault fsyncs while it reads back, see ``FilesystemVault``).
        """
        put = self.move_in(key, path, size=size, sha256=sha256, crc32c=crc32c)
        try:
            self.verify(key, size=size, checksums=dict([_staged_check(sha256, crc32c)]))
        except BaseException:
            self.delete(key)
            raise
        return put

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def verify(self, key: str, *, size: int, sha256: str | None = None,
               checksums: dict[str, str] | None = None) -> VerifyResult:
        """Size from metadata first (cheap, catches truncation), then every checksum read back.

        With no checksum given, sha256 is still computed so the caller can record it.
        """
        check_key(key)
        expected = _expected_checksums(sha256, checksums)
        uri = self.uri(key)
        stored = self.stat(key)
        if stored is None:
            raise VaultVerifyError(f"{uri}: object is missing", key=key, uri=uri,
                                   expected={"size": size}, actual={"size": None})
        if stored != size:
            raise VaultVerifyError(f"{uri}: size is {stored}, expected {size}", key=key, uri=uri,
                                   expected={"size": size}, actual={"size": stored})
        hasher = MultiHasher(list(expected) or ["sha256"])
        try:
            with self.open_read(key) as fh:
                _pump(fh, hasher, size_hint=size)
        except FileNotFoundError as exc:
            raise VaultVerifyError(f"{uri}: object vanished while being read", key=key, uri=uri) from exc
        actual = hasher.hexdigests()
        if hasher.size != size:
            raise VaultVerifyError(f"{uri}: read back {hasher.size} bytes, expected {size}", key=key,
                                   uri=uri, expected={"size": size}, actual={"size": hasher.size})
        bad = sorted(a for a, v in expected.items() if actual[a] != v)
        if bad:
            detail = ", ".join(f"{a} {actual[a]} != expected {expected[a]}" for a in bad)
            raise VaultVerifyError(f"{uri}: checksum mismatch: {detail}", key=key, uri=uri,
                                   expected={a: expected[a] for a in bad}, actual={a: actual[a] for a in bad})
        return VerifyResult(key, uri, size, actual)


# ------------------------------------------------------------------ filesystem


_hash_pool: ThreadPoolExecutor | None = None


def _hash_executor() -> ThreadPoolExecutor:
    global _hash_pool
    if _hash_pool is None:
        _hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-hash")
    return _hash_pool


def _pump(stream: BinaryIO, hasher: MultiHasher, write: Callable[[memoryview], None] | None = None, *,
          size_hint: int | None = None) -> None:
    """Read → hash ∥ (write, read next), through two reused buffers.

    A helper thread hashes block n while this thread writes it and reads block
    n+1 (hashlib, read and write all drop the GIL). Reusing two fixed buffers
    instead of a fresh ``bytes`` per read matters: on this machine a 256 MiB copy
    took 0.77 s with fresh 4 MiB allocations and 0.08 s with ``readinto``.
    A buffer is refilled only after the hash that read it has finished.
    """
    readinto = getattr(stream, "readinto", None)
    # A known small object gets small buffers: zeroing 2 × 4 MiB per call cost ~3 ms,
    # which dominated puts of bags with thousands of small files.
    bufsize = BLOCK_SIZE if size_hint is None else max(64 << 10, min(BLOCK_SIZE, size_hint + 1))
    buffers = [bytearray(bufsize), bytearray(bufsize)] if readinto else []
    pending: Future | None = None
    turn = 0
    try:
        while True:
            if readinto:
                buf = buffers[turn & 1]
                n = _checked(readinto(buf))
                block = memoryview(buf)[:n] if n else None
            else:
                data = _checked(stream.read(BLOCK_SIZE))
                block = memoryview(data) if data else None
            if pending is not None:
                pending.result()
                pending = None
            if block is None:
                return
            pending = _hash_executor().submit(hasher.update, block)
            if write is not None:
                write(block)
            turn += 1
    finally:
        if pending is not None:  # an error while writing: let the hash finish before buffers go away
            wait([pending])


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _staged_check(sha256: str, crc32c: str | None) -> tuple[str, str]:
    """What a staged file's copy and read-back compare: the pass's CRC32C of the bytes it wrote when known
    (~20 GB/s), else its sha256."""
    return ("crc32c", crc32c) if crc32c else ("sha256", sha256)


def _rename_into(path: Path, final: Path) -> None:
    """A staged file (already fsynced) becomes the object: an atomic rename, both directories fsynced."""
    os.replace(path, final)
    _fsync_dir(final.parent)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemVault(Vault):
    """A directory tree; the default vault at ``$INGEST_HOME/vault``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def default(cls) -> FilesystemVault:
        from tasks.home import home_path

        return cls(home_path("vault"))

    def __repr__(self) -> str:
        return f"FilesystemVault({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The object's path, proven to lie under the root (symlinks included)."""
        return confine(self.root, check_key(key))

    def put_stream(self, key: str, stream: BinaryIO, *, size_hint: int | None = None,
                   algorithms: Iterable[str] = ("sha256",), expect: dict[str, str] | None = None) -> PutResult:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        hasher = MultiHasher(sorted(set(_algorithms(algorithms)) | set(expect or ())))
        tmp = final.parent / temp_name(final.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            _pump(stream, hasher, lambda block: _write_all(fd, block), size_hint=size_hint)
            _check_expected(hasher, expect, f"copy into {final.as_uri()}")
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return PutResult(key, final.as_uri(), hasher.size, hasher.hexdigests())

    def move_in(self, key: str, path: str | Path, *, size: int, sha256: str, crc32c: str | None = None) -> PutResult:
        """On the vault's filesystem a staged file becomes the object by rename: no second write or read of
        the bytes. The rename is atomic; the file and both directories are fsynced so it survives a crash."""
        path = Path(path)
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if os.stat(path).st_dev != os.stat(final.parent).st_dev:
            return super().move_in(key, path, size=size, sha256=sha256, crc32c=crc32c)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            stored = os.fstat(fd).st_size
            if stored != size:
                raise VaultError(f"staged {path.name} has {stored} bytes, expected {size}")
            os.fsync(fd)
        finally:
            os.close(fd)
        _rename_into(path, final)
        return PutResult(key, final.as_uri(), size, {"sha256": sha256})

    def move_in_verified(self, key: str, path: str | Path, *, size: int, sha256: str,
                         crc32c: str | None = None) -> PutResult:
        """On the vault's filesystem: the staged file is read back and fsynced at once (the read is CPU,
        the fsync waits on the disk: ~0.3 s each for 512 MiB, overlapped), then renamed into place and
        both directories fsynced. Nothing appears under ``key`` before its bytes are durable and match."""
        path = Path(path)
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if os.stat(path).st_dev != os.stat(final.parent).st_dev:
            return super().move_in_verified(key, path, size=size, sha256=sha256, crc32c=crc32c)
        uri = final.as_uri()
        algorithm, expected = _staged_check(sha256, crc32c)
        hasher = MultiHasher([algorithm])
        with open(path, "rb", buffering=0) as fh:
            stored = os.fstat(fh.fileno()).st_size
            if stored != size:
                raise VaultVerifyError(f"staged {path.name} has {stored} bytes, expected {size}", key=key, uri=uri,
                                       expected={"size": size}, actual={"size": stored})
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-fsync") as pool:
                synced = pool.submit(os.fsync, fh.fileno())
                _pump(fh, hasher, size_hint=size)
                synced.result()
        actual = hasher.hexdigests()[algorithm]
        if hasher.size != size or actual != expected:
            raise VaultVerifyError(f"{uri}: staged copy reads back as {hasher.size} bytes, {algorithm} {actual}; "
                                   f"expected {size} bytes, {algorithm} {expected}", key=key, uri=uri,
                                   expected={"size": size, algorithm: expected},
                                   actual={"size": hasher.size, algorithm: actual})
        _rename_into(path, final)
        return PutResult(key, uri, size, {"sha256": sha256})

    def stat(self, key: str) -> int | None:
        try:
            st = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def open_read(self, key: str) -> BinaryIO:
        path = self.path(key)
        if path.is_dir():
            raise FileNotFoundError(f"no object under {key!r}")
        return open(path, "rb")

    def delete(self, key: str) -> None:
        path = self.path(key)
        if not path.is_dir():
            path.unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()

    def list(self, prefix: str = "") -> Iterator[str]:
        _check_list_prefix(prefix)
        head, _, _ = prefix.rpartition("/")
        start = confine(self.root, head) if head else self.root
        if not start.is_dir():
            return iter(())
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(TEMP_PREFIX)]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys, key=lambda k: k.encode("utf-8", "surrogateescape")))

    def cleanup_incomplete(self, older_than: float = 24 * 3600) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    continue
                p = Path(dirpath, name)
                try:
                    if p.stat().st_mtime <= cutoff:
                        p.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed


# ------------------------------------------------------------------ S3


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


class _BodyRaw(io.RawIOBase):
    """botocore's StreamingBody as a raw file, so BufferedReader gives full ``read(n)`` semantics."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Vault(Vault):
    """Any S3-compatible endpoint; objects live under ``s3://bucket/prefix/``.

    Objects smaller than ``part_size`` go up as one PUT; larger ones as a multipart
    upload with up to ``max_concurrency`` parts in flight (memory ≈ part_size × concurrency).
    Any exception aborts the multipart upload after in-flight parts finish, so
    nothing is left; only a killed process leaves an incomplete upload behind.

    Every request carries a CRC32 (``checksum_algorithm``) that S3 checks on
    arrival and stores with the object; pass ``checksum_algorithm=None`` for an
    S3-compatible server that rejects flexible checksums.
    """

    def __init__(self, bucket: str, *, client: Any = None, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, prefix: str = "",
                 part_size: int = DEFAULT_PART_SIZE, max_concurrency: int = DEFAULT_CONCURRENCY,
                 checksum_algorithm: str | None = "CRC32") -> None:
        if part_size < S3_MIN_PART:
            raise ValueError(f"part_size must be at least {S3_MIN_PART} bytes (S3 minimum)")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if not bucket:
            raise ValueError("bucket is required")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.checksum_algorithm = checksum_algorithm
        self._checksum = {"ChecksumAlgorithm": checksum_algorithm} if checksum_algorithm else {}
        if client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()  # own session: the default one is not thread-safe
            client = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region,
                aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                config=Config(max_pool_connections=max(10, max_concurrency + 2),
                              retries={"mode": "standard", "max_attempts": 5}),
            )
        self.client = client

    @classmethod
    def from_boto_client(cls, client: Any, bucket: str, prefix: str = "", **options: Any) -> S3Vault:
        return cls(bucket, client=client, prefix=prefix, **options)

    @classmethod
    def from_s3_bucket(cls, block: Any, **options: Any) -> S3Vault:
        """From a prefect-aws ``S3Bucket`` block: its credentials' client, bucket and folder."""
        return cls(block.bucket_name, client=block.credentials.get_s3_client(),
                   prefix=block.bucket_folder or "", **options)

    def __repr__(self) -> str:
        return f"S3Vault(s3://{self.bucket}/{self.prefix})"

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _part_size_for(self, size_hint: int | None) -> int:
        if not size_hint:
            return self.part_size
        need = -(-size_hint // (S3_MAX_PARTS - 100))  # margin: the hint may be a little short
        need = -(-need // (1 << 20)) << 20
        return max(self.part_size, need)

    def put_stream(self, key: str, stream: BinaryIO, *, size_hint: int | None = None,
                   algorithms: Iterable[str] = ("sha256",), expect: dict[str, str] | None = None) -> PutResult:
        """Each request carries its checksum, which S3 verifies on receipt; with ``expect`` the whole
        object's digest is compared before the single put or the multipart completion."""
        full = self.object_key(key)
        hasher = MultiHasher(sorted(set(_algorithms(algorithms)) | set(expect or ())))
        part_size = self._part_size_for(size_hint)
        first = _read_upto(stream, part_size)  # sized by what arrives: a 10-byte object costs 10 bytes
        hasher.update(first)
        if len(first) < part_size:
            _check_expected(hasher, expect, f"copy into {self.uri(key)}")
            self.client.put_object(Bucket=self.bucket, Key=full, Body=first, **self._checksum)
        else:
            self._put_multipart(full, first, stream, hasher, part_size, expect)
        return PutResult(key, self.uri(key), hasher.size, hasher.hexdigests())

    def _put_multipart(self, full: str, first: bytes, stream: BinaryIO, hasher: MultiHasher,
                       part_size: int, expect: dict[str, str] | None = None) -> None:
        """Parts go up from recycled buffers: a fresh multi-MiB allocation per part costs
        page faults that, on this VM, halved throughput."""
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=full, **self._checksum)["UploadId"]
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="vault-s3")
        inflight: deque[tuple[int, Future, bytes | bytearray]] = deque()
        free: list[bytearray] = []
        parts: list[dict[str, Any]] = []

        def settle(limit: int) -> None:
            while len(inflight) > limit:
                number, fut, buf = inflight.popleft()
                response = fut.result()
                part = {"PartNumber": number, "ETag": response["ETag"]}
                if self.checksum_algorithm:
                    field = f"Checksum{self.checksum_algorithm}"
                    part[field] = response[field]
                parts.append(part)
                if isinstance(buf, bytearray) and len(buf) == part_size:
                    free.append(buf)

        try:
            number, block = 1, first
            while True:
                inflight.append((number, pool.submit(
                    self.client.upload_part, Bucket=self.bucket, Key=full, UploadId=upload_id,
                    PartNumber=number, Body=block, **self._checksum), block))
                settle(self.max_concurrency - 1)  # reading the next part overlaps the uploads
                block = free.pop() if free else bytearray(part_size)
                n = _fill(stream, block)
                if n == 0:
                    break
                hasher.update(memoryview(block)[:n])
                if n < part_size:
                    del block[n:]  # the last part: shrink in place rather than copy
                number += 1
                if number > S3_MAX_PARTS:
                    raise VaultError(f"object exceeds {S3_MAX_PARTS} parts of {part_size} bytes; pass size_hint")
            settle(0)
            pool.shutdown()
            _check_expected(hasher, expect, f"copy into s3://{self.bucket}/{full}")  # before it can exist
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            # Parts still in flight could outlive an earlier abort, so wait for them first.
            pool.shutdown(wait=True, cancel_futures=True)
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the original error matters more; cleanup_incomplete catches it later
                log.warning("could not abort multipart upload %s of s3://%s/%s", upload_id, self.bucket, full,
                            exc_info=True)
            raise

    def stat(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise
        return int(head["ContentLength"])

    def open_read(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"no object under {self.uri(key)}") from exc
            raise
        return io.BufferedReader(_BodyRaw(response["Body"]), buffer_size=1 << 20)  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def list(self, prefix: str = "") -> Iterator[str]:
        _check_list_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
            for item in page.get("Contents", []):
                yield item["Key"][len(base):]

    def incomplete_uploads(self) -> list[dict[str, Any]]:
        """Multipart uploads under our prefix that were never completed nor aborted."""
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_multipart_uploads")
        return [u for page in paginator.paginate(Bucket=self.bucket, Prefix=base)
                for u in page.get("Uploads", [])]

    def cleanup_incomplete(self, older_than: float = 24 * 3600) -> int:
        cutoff = time.time() - older_than
        aborted = 0
        for upload in self.incomplete_uploads():
            if upload["Initiated"].timestamp() <= cutoff:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                       UploadId=upload["UploadId"])
                except Exception as exc:
                    if not _is_not_found(exc):
                        raise
                aborted += 1
        return aborted


def _checked(result: Any) -> Any:
    """A non-blocking source answers None for "no data yet"; taken as EOF it would truncate silently."""
    if result is None:
        raise VaultError("the source stream is non-blocking and had no data; the vault needs a blocking stream")
    return result


def _read_upto(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes, fewer only at EOF."""
    data = _checked(stream.read(size))
    if not data or len(data) == size:
        return data
    buf = bytearray(data)
    while len(buf) < size:
        more = _checked(stream.read(size - len(buf)))
        if not more:
            break
        buf += more
    return bytes(buf)


def _fill(stream: BinaryIO, buf: bytearray) -> int:
    """Fill ``buf`` unless EOF comes first: pipes and sockets return short reads, S3 parts may not be short."""
    view = memoryview(buf)
    readinto = getattr(stream, "readinto", None)
    filled = 0
    while filled < len(buf):
        if readinto is not None:
            n = _checked(readinto(view[filled:]))
        else:
            data = _checked(stream.read(len(buf) - filled))
            n = len(data)
            view[filled:filled + n] = data
        if not n:
            break
        filled += n
    return filled


# ------------------------------------------------------------------ from a recorded URI


def vault_from_uri(uri: str, *, fs_root: str | Path | None = None, client: Any = None,
                   **s3_options: Any) -> tuple[Vault, str]:
    """(vault, key) able to read, verify or delete the object a registry row points at.

    ``file://`` URIs do not say where the vault root was: pass ``fs_root`` to get the
    original key, otherwise the object's directory becomes the root and its name the key.
    """
    parts = urlsplit(uri)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if fs_root is not None:
            root = Path(fs_root).resolve()
            try:
                key = path.relative_to(root).as_posix()
            except ValueError:
                raise UserError(f"{uri} is not inside the vault root {root}") from None
            return FilesystemVault(root), check_key(key)
        return FilesystemVault(path.parent), check_key(path.name)
    if parts.scheme == "s3":
        key = parts.path.lstrip("/")
        if not parts.netloc or not key:
            raise UserError(f"{uri!r} does not name a bucket and a key")
        return S3Vault(parts.netloc, client=client, **s3_options), check_key(key)
    raise UserError(f"unsupported vault URI scheme in {uri!r}")


def default_vault() -> FilesystemVault:
    return FilesystemVault.default()
