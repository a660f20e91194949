"""Memory stays flat in file size (big sizes and RSS live in bench/bench_ega_crypto.py)."""
from __future__ import annotations

import tracemalloc

from tasks.crypto import reencrypt

from crypto_helpers import file_digest, sample


def test_64_mib_reencrypt_keeps_tracemalloc_peak_small(tmp_path, archive_keys, gpg):
    plain = sample(tmp_path / "big.bin", 64 << 20)
    encrypted = gpg.encrypt(plain, tmp_path / "big.gpg", "--compress-algo", "none")
    expected = file_digest(plain, "sha256")
    plain.unlink()
    tracemalloc.start()
    try:
        with open(encrypted, "rb") as src, open(tmp_path / "big.c4gh", "wb") as dst:
            result = reencrypt(src, dst, archive_keys.private_key, archive_keys.vault_public_key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.plaintext.checksums["sha256"] == expected
    assert peak < 32 << 20, f"tracemalloc peak {peak / 2**20:.1f} MiB"
