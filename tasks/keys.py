"""The archive's key pairs: OpenPGP (what submitters encrypt to) and Crypt4GH (the vault's).

Key type: RSA 3072 for both the OpenPGP primary (certify+sign) and its
encryption subkey. It is gpg 2.2's own default, pgpy implements every RSA
operation we need (generation, S2K protection, PKCS#1 session-key decryption)
while its Curve25519/ECDH support has interoperability gaps with gpg, and 3072
bits is the NIST-recommended size for ~128-bit security. Encryption goes to a
separate subkey, as gpg expects, so PKESK packets name the subkey's key id.

Keys are created once and never overwritten: files are opened with O_EXCL, so
two concurrent ``init`` runs cannot replace each other's secret key.
"""
from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from base64 import b64decode, b64encode
from pathlib import Path

from tasks.openpgp import OpenPGPPrivateKey

PGP_SECRET_NAME = "ega.sec.asc"
PGP_PUBLIC_NAME = "ega.pub.asc"
C4GH_SECRET_NAME = "vault.c4gh.sec"
C4GH_PUBLIC_NAME = "vault.c4gh.pub"
RSA_BITS = 3072


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` atomically with ``mode``; an existing file is an error, never replaced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # fails with FileExistsError instead of overwriting
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def quiet_pgpy() -> Iterator[None]:
    """pgpy warns about cryptography's moved algorithms on import and use; not our users' concern."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def generate_pgp_key(passphrase: str, *, name: str = "EGA archive", email: str = "ega@archive.local",
                     bits: int = RSA_BITS):
    """A passphrase-protected pgpy key: RSA primary (certify, sign) + RSA encryption subkey."""
    if not passphrase:
        raise ValueError("the OpenPGP private key needs a passphrase")
    with quiet_pgpy():
        import pgpy
        from pgpy.constants import (CompressionAlgorithm, Features, HashAlgorithm, KeyFlags, PubKeyAlgorithm,
                                    SymmetricKeyAlgorithm)

        primary = pgpy.PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, bits)
        uid = pgpy.PGPUID.new(name, email=email)
        primary.add_uid(
            uid,
            usage={KeyFlags.Certify, KeyFlags.Sign},
            hashes=[HashAlgorithm.SHA256, HashAlgorithm.SHA512],
            # What submitters' gpg may choose from: only ciphers the decryptor accepts.
            ciphers=[SymmetricKeyAlgorithm.AES256, SymmetricKeyAlgorithm.AES192, SymmetricKeyAlgorithm.AES128],
            compression=[CompressionAlgorithm.ZLIB, CompressionAlgorithm.ZIP, CompressionAlgorithm.BZ2,
                         CompressionAlgorithm.Uncompressed],
            features={Features.ModificationDetection},
        )
        sub = pgpy.PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, bits)
        primary.add_subkey(sub, usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage})
        primary.protect(passphrase, SymmetricKeyAlgorithm.AES256, HashAlgorithm.SHA256)
    return primary


def ensure_pgp_keypair(keys_dir: str | Path, passphrase: str) -> tuple[Path, Path]:
    """Create ``ega.sec.asc`` / ``ega.pub.asc`` unless present; return (private, public) paths.

    A lost public file is re-exported from the private key; a lost private key
    with a public key still present is refused, because submitters may already
    be encrypting to that public key and a new pair would silently orphan them.
    """
    keys = Path(keys_dir)
    keys.mkdir(parents=True, exist_ok=True)
    sec, pub = keys / PGP_SECRET_NAME, keys / PGP_PUBLIC_NAME
    if sec.exists():
        if not pub.exists():
            key = load_pgp_private_key(sec.read_text(), passphrase)
            _write_new(pub, str(key.pgpy_key.pubkey).encode(), 0o644)
        return sec, pub
    if pub.exists():
        raise FileExistsError(f"{pub} exists without its private key {sec.name}; refusing to create a new pair")
    key = generate_pgp_key(passphrase)
    _write_new(sec, str(key).encode(), 0o600)
    _write_new(pub, str(key.pubkey).encode(), 0o644)
    return sec, pub


UNLOCKED_KEYS_KEPT = 4
_unlocked: dict[tuple[str, str], OpenPGPPrivateKey] = {}
_unlocked_lock = threading.Lock()


def load_pgp_private_key(armored: str | bytes, passphrase: str) -> OpenPGPPrivateKey:
    """Parse an armored (or binary) private key and prove the passphrase unlocks it.

    A process keeps the last few keys it unlocked, by the key's bytes and the passphrase's digest,
    as gpg-agent keeps a passphrase: parsing and the S2K cost ~60 ms per call, which a 1 MiB ingest
    otherwise pays every time. The warm runner unlocks the home's default key once, before forking
    (``unlock_home_key``), so its calls find it. The same bytes with another passphrase are loaded
    (and checked) afresh.
    """
    blob = armored.encode() if isinstance(armored, str) else bytes(armored)
    memo = (hashlib.sha256(blob).hexdigest(), hashlib.sha256((passphrase or "").encode()).hexdigest())
    with _unlocked_lock:
        hit = _unlocked.get(memo)
    if hit is not None:
        return hit
    with quiet_pgpy():
        import pgpy

        key, _ = pgpy.PGPKey.from_blob(armored)
        loaded = OpenPGPPrivateKey(key, passphrase)
    with _unlocked_lock:
        _unlocked[memo] = loaded
        while len(_unlocked) > UNLOCKED_KEYS_KEPT:
            _unlocked.pop(next(iter(_unlocked)))
    return loaded


def unlock_home_key(keys_dir: str | Path) -> bool:
    """Unlock the embedded default key (``ega.sec.asc`` with ``passphrase`` beside it, as ``init`` writes
    them) into this process's keys; False when they are not there or do not unlock."""
    keys_dir = Path(keys_dir)
    try:
        load_pgp_private_key((keys_dir / "ega.sec.asc").read_text(), (keys_dir / "passphrase").read_text().strip())
    except (OSError, ValueError):
        return False
    return True


def load_pgp_private_key_file(path: str | Path, passphrase: str) -> OpenPGPPrivateKey:
    return load_pgp_private_key(Path(path).read_bytes(), passphrase)


# ---------------------------------------------------------------- Crypt4GH

_C4GH_PUBLIC_LABEL = b"CRYPT4GH PUBLIC KEY"
_C4GH_PRIVATE_LABEL = b"CRYPT4GH PRIVATE KEY"


def _pem(label: bytes, data: bytes) -> bytes:
    return b"-----BEGIN " + label + b"-----\n" + b64encode(data) + b"\n-----END " + label + b"-----\n"


def ensure_c4gh_keypair(keys_dir: str | Path, passphrase: str, *, comment: str = "ega vault") -> tuple[Path, Path]:
    """Create ``vault.c4gh.pub`` / ``vault.c4gh.sec`` in crypt4gh's own format unless present.

    The secret key is encrypted the way ``crypt4gh-keygen`` does it (scrypt +
    ChaCha20-Poly1305, via the package's encoder), so the reference CLI reads it
    with ``C4GH_PASSPHRASE``.
    """
    from crypt4gh.keys.c4gh import encode_private_key

    from tasks.c4gh import derive_public_key

    if not passphrase:
        raise ValueError("the Crypt4GH private key needs a passphrase")
    keys = Path(keys_dir)
    keys.mkdir(parents=True, exist_ok=True)
    pub, sec = keys / C4GH_PUBLIC_NAME, keys / C4GH_SECRET_NAME
    if sec.exists():
        if not pub.exists():
            _write_new(pub, _pem(_C4GH_PUBLIC_LABEL, derive_public_key(load_c4gh_private_key(sec, passphrase))), 0o644)
        return pub, sec
    if pub.exists():
        raise FileExistsError(f"{pub} exists without its private key {sec.name}; refusing to create a new pair")
    secret = os.urandom(32)
    _write_new(sec, _pem(_C4GH_PRIVATE_LABEL, encode_private_key(secret, passphrase.encode(), comment.encode())), 0o600)
    _write_new(pub, _pem(_C4GH_PUBLIC_LABEL, derive_public_key(secret)), 0o644)
    return pub, sec


def load_c4gh_public_key(path: str | Path) -> bytes:
    """Raw 32-byte X25519 public key from a Crypt4GH (or ssh-ed25519) public key file."""
    from crypt4gh.keys import get_public_key

    key = get_public_key(str(path))
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 32-byte Crypt4GH public key")
    return bytes(key)


def load_c4gh_private_key(path: str | Path, passphrase: str) -> bytes:
    """Raw 32-byte X25519 secret key (to verify vault copies; the ingest itself needs only the public key)."""
    from crypt4gh.keys import get_private_key

    return bytes(get_private_key(str(path), lambda: passphrase))


def public_key_from_pem(text: str | bytes) -> bytes:
    """Decode a Crypt4GH public key given as text (e.g. from a Block) instead of a file."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    if len(lines) < 3 or not lines[0].startswith(b"-----BEGIN CRYPT4GH PUBLIC KEY"):
        raise ValueError("not a Crypt4GH public key")
    key = b64decode(b"".join(lines[1:-1]))
    if len(key) != 32:
        raise ValueError("not a 32-byte Crypt4GH public key")
    return key
