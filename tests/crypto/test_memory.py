"""Memory stays flat in file size (big sizes and RSS live in bench/bench_ega_crypto.py)."""
from __future__ import annotations

import tracemalloc

from tasks.crypto import reencrypt

from crypto_helpers import file_digest, sample


def _reencrypt_traced(archive_keys, encrypted, out):
    """The pass's result and its tracemalloc peak."""
    tracemalloc.start()
    try:
        with open(encrypted, "rb") as src, open(out, "wb") as dst:
            result = reencrypt(src, dst, archive_keys.private_key, archive_keys.vault_public_key)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_64_mib_reencrypt_keeps_tracemalloc_peak_small(tmp_path, archive_keys, gpg):
    plain = sample(tmp_path / "big.bin", 64 << 20)
    encrypted = gpg.encrypt(plain, tmp_path / "big.gpg", "--compress-algo", "none")
    expected = file_digest(plain, "sha256")
    plain.unlink()
    result, peak = _reencrypt_traced(archive_keys, encrypted, tmp_path / "big.c4gh")
    assert result.plaintext.checksums["sha256"] == expected
    assert peak < 32 << 20, f"tracemalloc peak {peak / 2**20:.1f} MiB"


def test_a_compressed_upload_keeps_tracemalloc_peak_small(tmp_path, archive_keys, gpg):
    """gpg's default: ZLIB. Text that inflates 4x must still go through in bounded chunks."""
    plain = tmp_path / "reads.fastq"
    record = b"@read\n" + b"ACGT" * 25 + b"\n+\n" + b"I" * 100 + b"\n"
    with open(plain, "wb") as fh:
        for _ in range((64 << 20) // (1 << 20)):
            fh.write(record * ((1 << 20) // len(record)))
    encrypted = gpg.encrypt(plain, tmp_path / "reads.gpg", "--compress-algo", "zlib")
    assert encrypted.stat().st_size < plain.stat().st_size // 4, "gpg did not compress the upload"
    expected = file_digest(plain, "sha256")
    plain.unlink()
    result, peak = _reencrypt_traced(archive_keys, encrypted, tmp_path / "reads.c4gh")
    assert result.compression == "ZLIB" and result.plaintext.checksums["sha256"] == expected
    assert peak < 32 << 20, f"tracemalloc peak {peak / 2**20:.1f} MiB"
