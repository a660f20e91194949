"""Multi-digest hashing, checksum text formats, FITS checksum codes."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from tasks.checksum import (BLOCK_SIZE, FitsCheck, MultiHasher, hash_file, hash_stream, normalize_algorithm,
                            parse_companion, parse_manifest, parse_manifest_line, verify_fits_checksums)
from tasks.errors import UserError

ALGOS = ["md5", "sha1", "sha256", "sha512"]


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 12345])
def test_multi_digest_equals_hashlib(size: int) -> None:
    data = os.urandom(size)
    digest = hash_stream(io.BytesIO(data), ALGOS + ["crc32"])
    assert digest.size == size
    for algo in ALGOS:
        assert digest.checksums[algo] == hashlib.new(algo, data).hexdigest(), algo
    assert digest.checksums["crc32"] == f"{zlib.crc32(data):08x}"


def test_crc32c_known_vector() -> None:
    # RFC 3720 appendix B.4: 32 bytes of zeros -> 0x8a9136aa
    h = MultiHasher(["crc32c"])
    h.update(b"\x00" * 32)
    assert h.hexdigests()["crc32c"] == "8a9136aa"


def test_odd_block_sizes_and_small_updates() -> None:
    data = os.urandom(1 << 20)
    h = MultiHasher(ALGOS)
    for i in range(0, len(data), 777):
        h.update(data[i:i + 777])
    assert h.hexdigests()["sha512"] == hashlib.sha512(data).hexdigest()
    assert hash_stream(io.BytesIO(data), ["md5"], block_size=4096).checksums["md5"] == hashlib.md5(data).hexdigest()


def test_unknown_algorithm_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unsupported hash algorithm"):
        MultiHasher(["sha3_999"])
    assert normalize_algorithm("SHA-256") == "sha256"
    assert normalize_algorithm(None) == "md5"


def test_memory_is_flat_on_a_2gib_sparse_file(tmp_path: Path) -> None:
    """Peak RSS of a child hashing 2 GiB with all four algorithms stays under 100 MiB."""
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(2 << 30)
    code = (
        "from tasks.checksum import hash_file;"
        f"d = hash_file({str(sparse)!r}, ['md5','sha1','sha256','sha512']);"
        # VmHWM, not ru_maxrss: the latter inherits the (large) pytest parent's high-water mark
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0];"
        "print(d.size, d.checksums['sha256'], hwm)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    size, sha256, maxrss_kib = int(out[0]), out[1], int(out[2])
    assert size == 2 << 30
    zeros = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(2048):
        zeros.update(block)
    assert sha256 == zeros.hexdigest()
    assert maxrss_kib * 1024 < 100 * 2**20, f"peak RSS {maxrss_kib} KiB"


def test_hash_file_matches_stream(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"hello\n")
    assert hash_file(p, ["md5"]).checksums["md5"] == "b1946ac92492d2347c6235b4d2611184"


@pytest.mark.parametrize("text", [
    "b1946ac92492d2347c6235b4d2611184", "b1946ac92492d2347c6235b4d2611184\n",
    "b1946ac92492d2347c6235b4d2611184  hello.txt\n", "B1946AC92492D2347C6235B4D2611184 *hello.txt  \n",
])
def test_companion_formats(text: str) -> None:
    assert parse_companion(text, "md5") == "b1946ac92492d2347c6235b4d2611184"


@pytest.mark.parametrize("text,msg", [("", "empty"), ("zzz  name", "hex digest"), ("abcd", "32 hex digits")])
def test_companion_errors(text: str, msg: str) -> None:
    with pytest.raises(UserError, match=msg):
        parse_companion(text, "md5")


def test_manifest_lines() -> None:
    assert parse_manifest_line("ABC123  data/a file.txt\n") == ("abc123", "data/a file.txt")
    assert parse_manifest_line("abc123 data/x%0Ay") == ("abc123", "data/x\ny")
    assert parse_manifest("aa  data/a\n\nbb  data/b\n") == {"data/a": "aa", "data/b": "bb"}
    with pytest.raises(UserError, match="malformed manifest line"):
        parse_manifest_line("not-a-digest")


def _fits(path: Path, *, checksum: bool) -> None:
    import numpy as np
    from astropy.io import fits

    hdul = fits.HDUList([fits.PrimaryHDU(np.arange(100, dtype="i4").reshape(10, 10)),
                         fits.ImageHDU(np.ones((4, 4), dtype="f4"), name="EXT")])
    hdul.writeto(path, checksum=checksum)


def test_fits_checksums_ok_missing_and_failed(tmp_path: Path) -> None:
    good, plain, bad = tmp_path / "good.fits", tmp_path / "plain.fits", tmp_path / "bad.fits"
    _fits(good, checksum=True)
    _fits(plain, checksum=False)
    assert [(r.checksum, r.datasum) for r in verify_fits_checksums(good)] == [(FitsCheck.OK, FitsCheck.OK)] * 2
    assert [(r.checksum, r.datasum) for r in verify_fits_checksums(plain)] == [(FitsCheck.MISSING,) * 2] * 2
    raw = bytearray(good.read_bytes())
    raw[2880 + 10] ^= 0xFF  # a byte of the primary data unit
    bad.write_bytes(bytes(raw))
    primary = verify_fits_checksums(bad)[0]
    assert primary.datasum == FitsCheck.FAILED and primary.checksum == FitsCheck.FAILED


def test_fits_empty_datasum_is_a_user_error() -> None:
    from astropy.io.fits.tests import __file__ as fits_tests

    memtest = Path(fits_tests).parent / "data" / "memtest.fits"
    if not memtest.exists():
        pytest.skip("astropy ships no memtest.fits")
    with pytest.raises(UserError, match="DATASUM|cannot verify"):
        verify_fits_checksums(memtest)
