"""gpg-encrypted uploads through the one-pass pipeline, checked against hashlib and the crypt4gh CLI."""
from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest
from crypto_helpers import file_digest, sample

from tasks.checksum import Digest, hash_file
from tasks.crypto import ReencryptResult, reencrypt
from tasks.errors import UserError
from tasks.openpgp import (
    ChunkStream,
    chunks_from_file,
    read_envelope,
    recipient_key_ids,
)


def pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("reencrypt-")]


def run(archive_keys, encrypted: Path, out: Path, **kwargs) -> ReencryptResult:
    with open(encrypted, "rb") as src, open(out, "wb") as dst:
        return reencrypt(src, dst, archive_keys.private_key, archive_keys.vault_public_key, **kwargs)


def check_roundtrip(archive_keys, c4gh_decrypt, encrypted: Path, plain: Path, out: Path) -> ReencryptResult:
    result = run(archive_keys, encrypted, out)
    assert result.encrypted == Digest(encrypted.stat().st_size, {"md5": file_digest(encrypted, "md5"),
                                                                 "sha256": file_digest(encrypted, "sha256")})
    assert result.plaintext == Digest(plain.stat().st_size, {"md5": file_digest(plain, "md5"),
                                                             "sha256": file_digest(plain, "sha256")})
    assert result.output_size == out.stat().st_size
    assert result.output_sha256 == file_digest(out, "sha256")
    assert result.output_crc32c == hash_file(out, ("crc32c",)).checksums["crc32c"]  # (the vault's read-back)
    assert c4gh_decrypt(out) == file_digest(plain, "sha256")
    return result


@pytest.mark.parametrize("cipher", ["AES128", "AES192", "AES256"])
@pytest.mark.parametrize("compress", ["none", "zip", "zlib", "bzip2"])
def test_gpg_ciphers_and_compression(tmp_path, archive_keys, gpg, c4gh_decrypt, cipher, compress):
    plain = sample(tmp_path / "reads.fastq", 700_000, compressible=True)
    encrypted = gpg.encrypt(plain, tmp_path / "reads.fastq.gpg", "--cipher-algo", cipher, "--compress-algo", compress)
    result = check_roundtrip(archive_keys, c4gh_decrypt, encrypted, plain, tmp_path / "out.c4gh")
    assert result.cipher == {"AES128": "AES-128", "AES192": "AES-192", "AES256": "AES-256"}[cipher]
    assert result.compression == {"none": "uncompressed", "zip": "ZIP", "zlib": "ZLIB", "bzip2": "BZip2"}[compress]
    if compress != "none":
        assert encrypted.stat().st_size < plain.stat().st_size * 0.8  # really compressed
    assert result.literal_filename == "reads.fastq"


@pytest.mark.parametrize("size", [0, 1, 65536, 10_000_000])
def test_sizes(tmp_path, archive_keys, gpg, c4gh_decrypt, size):
    plain = sample(tmp_path / "data.bin", size)
    encrypted = gpg.encrypt(plain, tmp_path / "data.bin.gpg", "--compress-algo", "none", "--cipher-algo", "AES256")
    result = check_roundtrip(archive_keys, c4gh_decrypt, encrypted, plain, tmp_path / "out.c4gh")
    assert result.plaintext.size == size
    # Crypt4GH: header, then one 28-byte overhead per started 64 KiB segment.
    segments = -(-size // 65536)
    assert result.output_size - size - 28 * segments == len(_header_of(tmp_path / "out.c4gh"))


def _header_of(path: Path) -> bytes:
    data = path.read_bytes()
    count = int.from_bytes(data[12:16], "little")
    pos = 16
    for _ in range(count):
        pos += int.from_bytes(data[pos:pos + 4], "little")
    return data[:pos]


@pytest.mark.parametrize("compress", ["none", "zlib"])
def test_stdin_partial_body_lengths(tmp_path, archive_keys, gpg, c4gh_decrypt, compress):
    plain = sample(tmp_path / "piped.bin", 3_000_000, compressible=True)
    encrypted = gpg.encrypt(plain, tmp_path / "piped.gpg", "--compress-algo", compress, stdin=True)
    # Independent evidence from gpg itself that the data packet used partial lengths ...
    assert "tag=18" in gpg.list_packets(encrypted) and " partial " in gpg.list_packets(encrypted)
    # ... and our parser agrees.
    with open(encrypted, "rb") as fh:
        header = read_envelope(ChunkStream(chunks_from_file(fh))).data_header
    assert header.tag == 18 and header.partial
    result = check_roundtrip(archive_keys, c4gh_decrypt, encrypted, plain, tmp_path / "out.c4gh")
    assert result.literal_filename == ""  # gpg names stdin data ""


def test_block_size_does_not_change_results(tmp_path, archive_keys, gpg, c4gh_decrypt):
    plain = sample(tmp_path / "d.bin", 1_500_000)
    encrypted = gpg.encrypt(plain, tmp_path / "d.gpg", "--compress-algo", "none")
    small = run(archive_keys, encrypted, tmp_path / "a.c4gh", block_size=64 << 10)
    large = run(archive_keys, encrypted, tmp_path / "b.c4gh", block_size=4 << 20)
    assert small.plaintext == large.plaintext and small.encrypted == large.encrypted
    assert small.session_key_sha256 == large.session_key_sha256
    assert c4gh_decrypt(tmp_path / "a.c4gh") == c4gh_decrypt(tmp_path / "b.c4gh") == file_digest(plain, "sha256")


def test_signed_and_encrypted(tmp_path, archive_keys, gpg, c4gh_decrypt):
    plain = sample(tmp_path / "signed.bin", 200_000)
    encrypted = gpg.encrypt(plain, tmp_path / "signed.gpg", "--sign", "--local-user", gpg.submitter_key_id)
    check_roundtrip(archive_keys, c4gh_decrypt, encrypted, plain, tmp_path / "out.c4gh")


def test_several_recipients_and_hidden_key_id(tmp_path, archive_keys, gpg, c4gh_decrypt):
    plain = sample(tmp_path / "multi.bin", 100_000)
    both = gpg.encrypt(plain, tmp_path / "both.gpg", recipients=(gpg.submitter_key_id, "EGA archive"))
    ids = recipient_key_ids(both)
    assert gpg.submitter_key_id in ids and len(ids) == 2
    assert set(ids) & archive_keys.private_key.key_ids
    result = check_roundtrip(archive_keys, c4gh_decrypt, both, plain, tmp_path / "out.c4gh")
    assert result.key_id in archive_keys.private_key.key_ids

    hidden = gpg.encrypt(plain, tmp_path / "hidden.gpg", "--throw-keyids")
    assert recipient_key_ids(hidden) == ["0" * 16]
    check_roundtrip(archive_keys, c4gh_decrypt, hidden, plain, tmp_path / "out2.c4gh")


def test_session_key_hash_identifies_the_session_key(tmp_path, archive_keys, gpg):
    plain = sample(tmp_path / "s.bin", 10_000)
    one = gpg.encrypt(plain, tmp_path / "one.gpg")
    two = gpg.encrypt(plain, tmp_path / "two.gpg")
    a = run(archive_keys, one, tmp_path / "a.c4gh")
    b = run(archive_keys, one, tmp_path / "b.c4gh")
    c = run(archive_keys, two, tmp_path / "c.c4gh")
    assert a.session_key_sha256 == b.session_key_sha256 != c.session_key_sha256
    assert len(a.session_key_sha256) == 64


def test_on_session_key_can_stop_before_decrypting(tmp_path, archive_keys, gpg):
    plain = sample(tmp_path / "s.bin", 500_000)
    encrypted = gpg.encrypt(plain, tmp_path / "s.gpg", "--compress-algo", "none")
    seen = []

    def refuse(session):
        seen.append(session.sha256)
        raise UserError("session key already used by another file")

    with pytest.raises(UserError, match="already used"):
        run(archive_keys, encrypted, tmp_path / "out.c4gh", on_session_key=refuse)
    assert len(seen) == 1 and not pipeline_threads()


class _FailingSink(io.RawIOBase):
    def __init__(self, fail_after: int) -> None:
        self.left = fail_after

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.left -= len(data)
        if self.left < 0:
            raise OSError(28, "No space left on device")
        return len(data)


def test_write_failure_is_not_a_user_error_and_stops_all_threads(tmp_path, archive_keys, gpg):
    plain = sample(tmp_path / "w.bin", 3_000_000)
    encrypted = gpg.encrypt(plain, tmp_path / "w.gpg", "--compress-algo", "none")
    with open(encrypted, "rb") as src, pytest.raises(OSError) as info:
        reencrypt(src, _FailingSink(1_000_000), archive_keys.private_key, archive_keys.vault_public_key,
                  block_size=256 << 10)
    assert not isinstance(info.value, UserError)
    assert not pipeline_threads()


def test_reads_through_a_read_only_wrapper(tmp_path, archive_keys, gpg, c4gh_decrypt):
    """Sources without readinto (e.g. an HTTP body) are read with read()."""

    class ReadOnly:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n: int = -1) -> bytes:
            return self.fh.read(min(n, 10_000))  # short reads, as sockets give

    plain = sample(tmp_path / "r.bin", 400_000)
    encrypted = gpg.encrypt(plain, tmp_path / "r.gpg")
    with open(encrypted, "rb") as fh, open(tmp_path / "out.c4gh", "wb") as dst:
        result = reencrypt(ReadOnly(fh), dst, archive_keys.private_key, archive_keys.vault_public_key)
    assert result.plaintext.checksums["sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert c4gh_decrypt(tmp_path / "out.c4gh") == result.plaintext.checksums["sha256"]
