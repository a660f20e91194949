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


def _rsa_pkesk(part, algorithm: int, session_key: bytes) -> bytes:
    """A version-3 PKESK body (RFC 4880 §5.1) for an RSA (sub)key: what gpg writes for a recipient."""
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    km = part._key.keymaterial
    public = rsa.RSAPublicNumbers(int(km.e), int(km.n)).public_key()
    m = bytes([algorithm]) + session_key + (sum(session_key) % 65536).to_bytes(2, "big")
    c = public.encrypt(m, padding.PKCS1v15())
    bits = int.from_bytes(c, "big").bit_length()
    return bytes([3]) + bytes.fromhex(part.fingerprint.keyid) + bytes([1]) + bits.to_bytes(2, "big") + c.lstrip(b"\0")


def test_each_part_of_a_key_is_unlocked_once_when_first_needed(archive_keys, monkeypatch):
    """Every (sub)key has its own S2K (~45 ms at gpg's count): loading unlocks the encryption subkey (a
    wrong passphrase is still found there), the certifying primary only when a file is addressed to it."""
    from tasks import openpgp

    from tasks import keys

    derivations = []
    real = openpgp._derive_s2k
    monkeypatch.setattr(openpgp, "_derive_s2k", lambda s2k, pw: derivations.append(1) or real(s2k, pw))
    monkeypatch.setattr(keys, "_unlocked", {})  # (this process's unlocked keys: none yet)
    key = load_pgp_private_key(archive_keys.pgp_sec.read_text(), PASSPHRASE)
    assert len(derivations) == 1
    (sub_id, sub), = key.pgpy_key.subkeys.items()
    session = bytes(range(32))
    opened = key.decrypt_session_key(openpgp.Recipient(sub_id.upper(), 1, _rsa_pkesk(sub, 9, session)))
    assert (opened.algorithm, opened.key) == (9, session) and len(derivations) == 1
    primary = key.pgpy_key
    to_primary = openpgp.Recipient(primary.fingerprint.keyid.upper(), 1, _rsa_pkesk(primary, 9, session))
    assert key.decrypt_session_key(to_primary).key == session and len(derivations) == 2
    assert key.decrypt_session_key(to_primary).key == session and len(derivations) == 2  # once only


def test_a_process_keeps_the_keys_it_unlocked(archive_keys, tmp_path, monkeypatch):
    """As gpg-agent keeps a passphrase: the same key bytes and passphrase are not parsed and unlocked
    again (~60 ms a call); another passphrase is checked afresh; the warm runner unlocks the home's key."""
    from tasks import keys, openpgp

    derivations = []
    real = openpgp._derive_s2k
    monkeypatch.setattr(openpgp, "_derive_s2k", lambda s2k, pw: derivations.append(1) or real(s2k, pw))
    monkeypatch.setattr(keys, "_unlocked", {})
    armored = archive_keys.pgp_sec.read_text()
    first = load_pgp_private_key(armored, PASSPHRASE)
    assert load_pgp_private_key(armored, PASSPHRASE) is first and len(derivations) == 1
    with pytest.raises(ValueError, match="wrong passphrase"):
        load_pgp_private_key(armored, PASSPHRASE + "x")
    home_keys = tmp_path / "keys"
    home_keys.mkdir()
    assert not keys.unlock_home_key(home_keys)  # nothing there yet
    shutil.copy(archive_keys.pgp_sec, home_keys / "ega.sec.asc")
    (home_keys / "passphrase").write_text(PASSPHRASE + "\n")
    monkeypatch.setattr(keys, "_unlocked", {})
    assert keys.unlock_home_key(home_keys)
    before = len(derivations)
    assert load_pgp_private_key(armored, PASSPHRASE) is not first and len(derivations) == before
