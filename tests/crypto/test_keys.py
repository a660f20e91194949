"""Key management: created once, never overwritten, usable by gpg and the crypt4gh CLI."""
from __future__ import annotations

import shutil
import stat

import pytest

from tasks.keys import (ensure_c4gh_keypair, ensure_pgp_keypair, load_c4gh_public_key, load_pgp_private_key,
                        public_key_from_pem)

from crypto_helpers import PASSPHRASE



def test_idempotent(archive_keys):
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in archive_keys.dir.iterdir()}
    assert ensure_pgp_keypair(archive_keys.dir, PASSPHRASE) == (archive_keys.pgp_sec, archive_keys.pgp_pub)
    assert ensure_c4gh_keypair(archive_keys.dir, PASSPHRASE) == (archive_keys.c4gh_pub, archive_keys.c4gh_sec)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in archive_keys.dir.iterdir()}
    assert before == after
    assert sorted(p.name for p in archive_keys.dir.iterdir()) == [
        "ega.pub.asc", "ega.sec.asc", "vault.c4gh.pub", "vault.c4gh.sec"]


def test_secret_files_are_private(archive_keys):
    for path in (archive_keys.pgp_sec, archive_keys.c4gh_sec):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in archive_keys.pgp_sec.read_text()
    assert "PUBLIC KEY" in archive_keys.pgp_pub.read_text()


def test_gpg_sees_an_rsa_encryption_subkey(archive_keys, gpg):
    listing = gpg.run("--with-colons", "--list-keys", "EGA archive").stdout.decode().splitlines()
    pub = next(line.split(":") for line in listing if line.startswith("pub:"))
    sub = next(line.split(":") for line in listing if line.startswith("sub:"))
    assert pub[2] == sub[2] == "3072" and pub[3] == sub[3] == "1"  # RSA 3072
    assert "e" in sub[11] and "e" not in pub[11]  # gpg encrypts to the subkey
    assert sub[4] in archive_keys.private_key.key_ids and pub[4] in archive_keys.private_key.key_ids


def test_lost_public_key_is_reexported(tmp_path, archive_keys):
    shutil.copy(archive_keys.pgp_sec, tmp_path / "ega.sec.asc")
    shutil.copy(archive_keys.c4gh_sec, tmp_path / "vault.c4gh.sec")
    sec, pub = ensure_pgp_keypair(tmp_path, PASSPHRASE)
    import pgpy

    assert pgpy.PGPKey.from_file(str(pub))[0].fingerprint == archive_keys.private_key.pgpy_key.fingerprint
    c_pub, _ = ensure_c4gh_keypair(tmp_path, PASSPHRASE)
    assert load_c4gh_public_key(c_pub) == archive_keys.vault_public_key


def test_public_key_without_private_key_is_refused(tmp_path, archive_keys):
    shutil.copy(archive_keys.pgp_pub, tmp_path / "ega.pub.asc")
    shutil.copy(archive_keys.c4gh_pub, tmp_path / "vault.c4gh.pub")
    with pytest.raises(FileExistsError):
        ensure_pgp_keypair(tmp_path, PASSPHRASE)
    with pytest.raises(FileExistsError):
        ensure_c4gh_keypair(tmp_path, PASSPHRASE)
    assert not (tmp_path / "ega.sec.asc").exists() and not (tmp_path / "vault.c4gh.sec").exists()


def test_loading(archive_keys):
    with pytest.raises(ValueError, match="wrong passphrase"):
        load_pgp_private_key(archive_keys.pgp_sec.read_text(), "wrong")
    with pytest.raises(ValueError, match="no passphrase"):
        load_pgp_private_key(archive_keys.pgp_sec.read_text(), None)
    with pytest.raises(ValueError, match="public key"):
        load_pgp_private_key(archive_keys.pgp_pub.read_text(), PASSPHRASE)
    assert public_key_from_pem(archive_keys.c4gh_pub.read_text()) == archive_keys.vault_public_key
