"""Checksums: every algorithm in one streaming pass, and the formats that carry them.

Reading a file once and feeding every digest from the same buffer is what keeps
ingest I/O-bound instead of hash-bound; the per-algorithm hashers run on a small
thread pool because hashlib releases the GIL on large buffers.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

from tasks.errors import UserError

BLOCK_SIZE = 4 << 20  # 4 MiB: large enough to amortise thread hand-off, small enough to stay flat
ALGORITHMS = ("md5", "sha1", "sha256", "sha512", "crc32c", "crc32")
HEX_LENGTHS = {"md5": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_THREAD_MIN = 256 << 10  # below this a thread hand-off costs more than it saves

_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="hash")
    return _pool


class _Crc:
    """hashlib-shaped wrapper so CRCs ride the same pass as the cryptographic digests."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.value = 0
        if kind == "crc32c":
            import crc32c  # optional C extension, only needed when asked for

            self._fn = crc32c.crc32c
        else:
            self._fn = zlib.crc32

    def update(self, data: bytes | memoryview) -> None:
        self.value = self._fn(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08x}"


def new_hasher(algorithm: str):
    """One hashlib-shaped digest (``update``, ``hexdigest``), CRCs included."""
    if algorithm in ("crc32c", "crc32"):
        return _Crc(algorithm)
    if algorithm not in HEX_LENGTHS:
        raise UserError(f"unsupported hash algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def normalize_algorithm(name: str | None) -> str:
    """Accept the spellings archives use (``SHA-256``, ``sha256``, null → md5)."""
    if name is None:
        return "md5"
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in ALGORITHMS:
        raise UserError(f"unsupported hash algorithm {name!r}")
    return key


class MultiHasher:
    """Feed one buffer to several digests; large buffers are hashed in parallel threads."""

    def __init__(self, algorithms: Iterable[str]) -> None:
        algos = list(dict.fromkeys(algorithms))
        if not algos:
            raise ValueError("at least one algorithm is required")
        self.algorithms = algos
        self._hashers = [new_hasher(a) for a in algos]
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self.size += n
        if n >= _THREAD_MIN and len(self._hashers) > 1:
            # The caller must not mutate `data` until we return; we wait for every thread.
            futures = [_executor().submit(h.update, data) for h in self._hashers[1:]]
            self._hashers[0].update(data)
            for f in futures:
                f.result()
        else:
            for h in self._hashers:
                h.update(data)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in zip(self.algorithms, self._hashers)}


def iter_blocks(stream: BinaryIO, block_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    while True:
        block = stream.read(block_size)
        if not block:
            return
        yield block


@dataclass(frozen=True)
class Digest:
    size: int
    checksums: dict[str, str]


def hash_stream(stream: BinaryIO, algorithms: Iterable[str] = ("sha256",), block_size: int = BLOCK_SIZE) -> Digest:
    hasher = MultiHasher(algorithms)
    for block in iter_blocks(stream, block_size):
        hasher.update(block)
    return Digest(hasher.size, hasher.hexdigests())


def hash_file(path: str | Path, algorithms: Iterable[str] = ("sha256",), block_size: int = BLOCK_SIZE) -> Digest:
    with open(path, "rb", buffering=0) as fh:
        return hash_stream(fh, algorithms, block_size)


# ---------------------------------------------------------------- text formats

_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")


def parse_companion(text: str, algorithm: str | None = None) -> str:
    """Parse an ``x.md5`` / ``x.sha256`` file: ``<hex>`` or ``<hex>  <name>``.

    Trailing whitespace and a ``*`` binary marker are tolerated; anything else is
    a user error because the submitter wrote the file.
    """
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise UserError("checksum file is empty")
    hexpart = line.split()[0]
    if not _HEX_RE.match(hexpart):
        raise UserError(f"checksum file does not start with a hex digest: {line[:80]!r}")
    if algorithm is not None:
        want = HEX_LENGTHS.get(normalize_algorithm(algorithm))
        if want and len(hexpart) != want:
            raise UserError(f"{algorithm} digest must have {want} hex digits, got {len(hexpart)}")
    return hexpart.lower()


def parse_manifest_line(line: str) -> tuple[str, str]:
    """One BagIt manifest line → (digest, path). Paths may contain spaces; %0A/%0D/%25 are decoded."""
    stripped = line.rstrip("\r\n")
    parts = stripped.split(None, 1)
    if len(parts) != 2 or not _HEX_RE.match(parts[0]):
        raise UserError(f"malformed manifest line: {stripped[:120]!r}")
    path = parts[1].strip().lstrip("*")
    path = path.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")
    return parts[0].lower(), path


def parse_manifest(text: str) -> dict[str, str]:
    """Whole manifest → {path: digest}; blank lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            digest, path = parse_manifest_line(line)
            out[path] = digest
    return out


# ---------------------------------------------------------------- FITS


class FitsCheck(IntEnum):
    """astropy's verify_checksum/verify_datasum codes, named so 'missing' is never read as ok."""

    FAILED = 0
    OK = 1
    MISSING = 2


@dataclass(frozen=True)
class HduChecksum:
    index: int
    name: str
    checksum: FitsCheck
    datasum: FitsCheck
    checksum_value: str | None


def verify_fits_checksums(path: str | Path) -> list[HduChecksum]:
    """Verify CHECKSUM/DATASUM of every HDU.

    Compressed image HDUs are verified on their stored (compressed) table,
    because astropy's verification of the decompressed view fails spuriously.
    Unreadable files, and keywords astropy cannot even parse (an empty DATASUM),
    become a UserError rather than a traceback.
    """
    import warnings

    from astropy.io import fits

    results: list[HduChecksum] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, disable_image_compression=True, memmap=True, lazy_load_hdus=True) as hdul:
                for index, hdu in enumerate(hdul):
                    header = hdu.header
                    checksum = _fits_code(hdu, "CHECKSUM", header)
                    datasum = _fits_code(hdu, "DATASUM", header)
                    value = header.get("CHECKSUM")
                    results.append(HduChecksum(index, hdu.name, checksum, datasum, str(value) if value else None))
    except UserError:
        raise
    except Exception as exc:  # astropy raises a zoo of types for broken files
        raise UserError(f"cannot verify FITS checksums of {Path(path).name}: {exc}") from exc
    return results


def _fits_code(hdu, keyword: str, header) -> FitsCheck:
    if keyword not in header:
        return FitsCheck.MISSING
    raw = header[keyword]
    if raw is None or str(raw).strip() == "":
        raise UserError(f"HDU {hdu.name or 'PRIMARY'} has an empty {keyword} keyword")
    code = hdu.verify_checksum() if keyword == "CHECKSUM" else hdu.verify_datasum()
    return FitsCheck(code)
