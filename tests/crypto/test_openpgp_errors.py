"""Bad uploads: each becomes a UserError naming the problem, never a traceback or a silent pass."""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from tasks.crypto import reencrypt
from tasks.errors import UserError
from tasks.openpgp import recipient_key_ids

from crypto_helpers import PASSPHRASE, sample


def attempt(archive_keys, encrypted: Path, tmp_path: Path) -> UserError:
    with open(encrypted, "rb") as src, open(tmp_path / "out.c4gh", "wb") as dst:
        with pytest.raises(UserError) as info:
            reencrypt(src, dst, archive_keys.private_key, archive_keys.vault_public_key, block_size=64 << 10)
    # every failure path stops the pipeline's threads
    assert not [t.name for t in threading.enumerate() if t.name.startswith("reencrypt-")]
    return info.value


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, gpg):
    """One plaintext and a few gpg encryptions of it, shared by the error tests."""
    d = tmp_path_factory.mktemp("uploads")
    plain = sample(d / "plain.bin", 400_000, compressible=True)
    return {
        "plain": plain,
        "fixed": gpg.encrypt(plain, d / "fixed.gpg", "--compress-algo", "none"),
        "piped": gpg.encrypt(plain, d / "piped.gpg", "--compress-algo", "none", stdin=True),
        "zlib": gpg.encrypt(plain, d / "zlib.gpg", "--compress-algo", "zlib"),
    }


@pytest.mark.parametrize("content, code", [
    (b"", "not_openpgp"),
    (b"just some text, not encrypted\n", "not_openpgp"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "not_openpgp"),
    (b"-----BEGIN PGP MESSAGE-----\n\nhQEMA...\n-----END PGP MESSAGE-----\n", "armored"),
])
def test_not_openpgp(tmp_path, archive_keys, content, code):
    path = tmp_path / "upload"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        recipient_key_ids(path)
    assert info.value.code == code
    assert attempt(archive_keys, path, tmp_path).code == code


def test_openpgp_but_not_encrypted(tmp_path, archive_keys, gpg):
    plain = sample(tmp_path / "p.bin", 1000)
    signed = tmp_path / "signed.gpg"
    gpg.run("--local-user", gpg.submitter_key_id, "--output", str(signed), "--sign", str(plain))
    key = tmp_path / "key.gpg"
    key.write_bytes(gpg.run("--export", gpg.submitter_key_id).stdout)
    for path, words in ((signed, "unencrypted"), (key, "key")):
        error = attempt(archive_keys, path, tmp_path)
        assert error.code == "not_openpgp" and words in error.message


def test_legacy_sed_packet_is_refused(tmp_path, archive_keys, gpg, uploads):
    sed = gpg.encrypt(uploads["plain"], tmp_path / "sed.gpg", "--rfc2440", "--cipher-algo", "AES256")
    assert "tag=9" in gpg.list_packets(sed)  # gpg really wrote the unprotected packet
    error = attempt(archive_keys, sed, tmp_path)
    assert error.code == "legacy_sed" and "tag 9" in error.message


@pytest.mark.parametrize("name", ["fixed", "piped"])
@pytest.mark.parametrize("where", [0.3, 0.999])
def test_tampered_byte_fails_the_mdc(tmp_path, archive_keys, uploads, name, where):
    data = bytearray(uploads[name].read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path = tmp_path / "tampered.gpg"
    path.write_bytes(bytes(data))
    error = attempt(archive_keys, path, tmp_path)
    assert error.code == "mdc_mismatch", error.message
    assert "integrity check failed" in error.message


def test_tampered_compressed_data_reports_the_mdc(tmp_path, archive_keys, uploads):
    """A flipped bit garbles the deflate stream first; the MDC is still what gets reported."""
    data = bytearray(uploads["zlib"].read_bytes())
    data[len(data) // 2] ^= 0x40
    path = tmp_path / "tampered.gpg"
    path.write_bytes(bytes(data))
    assert attempt(archive_keys, path, tmp_path).code == "mdc_mismatch"


@pytest.mark.parametrize("name", ["fixed", "piped"])
@pytest.mark.parametrize("keep", [5, 300, 0.5, -1])
def test_truncated_file(tmp_path, archive_keys, uploads, name, keep):
    data = uploads[name].read_bytes()
    cut = keep if isinstance(keep, int) and keep > 0 else (len(data) - 1 if keep == -1 else int(len(data) * keep))
    path = tmp_path / "truncated.gpg"
    path.write_bytes(data[:cut])
    error = attempt(archive_keys, path, tmp_path)
    assert error.code in ("truncated", "mdc_mismatch"), error.message


def test_trailing_garbage(tmp_path, archive_keys, uploads):
    path = tmp_path / "trailing.gpg"
    path.write_bytes(uploads["fixed"].read_bytes() + b"\x00garbage")
    assert attempt(archive_keys, path, tmp_path).code == "bad_structure"


def test_unrelated_key(tmp_path, archive_keys, gpg, uploads):
    other = gpg.encrypt(uploads["plain"], tmp_path / "other.gpg", recipients=(gpg.submitter_key_id,))
    ids = recipient_key_ids(other)
    assert ids == [gpg.submitter_key_id]
    assert not set(ids) & archive_keys.private_key.key_ids  # the lead's "encrypted with an unrelated key"
    error = attempt(archive_keys, other, tmp_path)
    assert error.code == "unrelated_key" and gpg.submitter_key_id in error.message


def test_passphrase_only_encryption(tmp_path, archive_keys, gpg, uploads):
    sym = tmp_path / "sym.gpg"
    gpg.run("--passphrase", "secret", "--output", str(sym), "--symmetric", str(uploads["plain"]))
    with pytest.raises(UserError) as info:
        recipient_key_ids(sym)
    assert info.value.code == "passphrase_encrypted"
    assert attempt(archive_keys, sym, tmp_path).code == "passphrase_encrypted"


def test_unsupported_cipher(tmp_path, archive_keys, gpg, uploads):
    cast5 = gpg.encrypt(uploads["plain"], tmp_path / "cast5.gpg", "--cipher-algo", "CAST5")
    error = attempt(archive_keys, cast5, tmp_path)
    assert error.code == "unsupported_cipher" and "unsupported cipher CAST5" in error.message


def test_recipient_key_ids_reads_only_the_envelope(archive_keys, uploads):
    class Counting:
        def __init__(self, path):
            self.fh = open(path, "rb")
            self.read_bytes = 0

        def read(self, n=-1):
            data = self.fh.read(n)
            self.read_bytes += len(data)
            return data

    src = Counting(uploads["fixed"])
    ids = recipient_key_ids(src)
    src.fh.close()
    assert set(ids) <= archive_keys.private_key.key_ids and ids
    assert src.read_bytes < 100_000 < uploads["fixed"].stat().st_size


def test_gpg_agrees_the_tampered_file_is_bad(tmp_path, archive_keys, gpg, uploads):
    """Cross-check the MDC verdict with gpg itself (secret key imported into a separate home)."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home), "PATH": "/usr/bin:/bin"}
    base = ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", PASSPHRASE]
    subprocess.run(base + ["--import", str(archive_keys.pgp_sec)], env=env, check=True, capture_output=True)
    data = bytearray(uploads["fixed"].read_bytes())
    data[len(data) // 3] ^= 0x01
    path = tmp_path / "tampered.gpg"
    path.write_bytes(bytes(data))
    bad = subprocess.run(base + ["--decrypt", str(path)], env=env, capture_output=True)
    good = subprocess.run(base + ["--decrypt", str(uploads["fixed"])], env=env, capture_output=True)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True)
    assert good.returncode == 0 and good.stdout == uploads["plain"].read_bytes()  # gpg reads our key
    assert bad.returncode != 0
    assert attempt(archive_keys, path, tmp_path).code == "mdc_mismatch"
