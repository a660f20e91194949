"""Real peers for the crypto tests: the gpg CLI (throwaway GNUPGHOME) and the crypt4gh CLI.

The archive's key pairs are made once per session by ``tasks.keys`` itself, so
every test also proves gpg accepts our OpenPGP public key and the reference
crypt4gh CLI accepts our Crypt4GH keys.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from crypto_helpers import PASSPHRASE

if not shutil.which("gpg") or not shutil.which("crypt4gh"):
    pytest.skip("the gpg and crypt4gh CLIs are required", allow_module_level=True)


@dataclass
class ArchiveKeys:
    dir: Path
    pgp_sec: Path
    pgp_pub: Path
    c4gh_pub: Path
    c4gh_sec: Path
    private_key: object  # tasks.openpgp.OpenPGPPrivateKey
    vault_public_key: bytes


@pytest.fixture(scope="session")
def archive_keys(tmp_path_factory: pytest.TempPathFactory) -> ArchiveKeys:
    from tasks.keys import ensure_c4gh_keypair, ensure_pgp_keypair, load_c4gh_public_key, load_pgp_private_key

    keys = tmp_path_factory.mktemp("keys")
    sec, pub = ensure_pgp_keypair(keys, PASSPHRASE)
    c_pub, c_sec = ensure_c4gh_keypair(keys, PASSPHRASE)
    return ArchiveKeys(keys, sec, pub, c_pub, c_sec, load_pgp_private_key(sec.read_text(), PASSPHRASE),
                       load_c4gh_public_key(c_pub))


class Gpg:
    """The gpg CLI in its own home, with the archive's public key and a submitter key pair."""

    def __init__(self, home: Path, archive_pub: Path) -> None:
        self.home = home
        self.env = {**os.environ, "GNUPGHOME": str(home)}
        self.run("--import", str(archive_pub))
        self.run("--passphrase", "", "--quick-gen-key", "Submitter <submitter@example.org>", "rsa2048",
                 "sign,encr", "never")
        listing = self.run("--with-colons", "--list-keys", "submitter@example.org").stdout.decode()
        # Subkey-less key: its one key id is both signer and (unrelated) recipient.
        self.submitter_key_id = next(line.split(":")[4] for line in listing.splitlines() if line.startswith("pub"))

    def run(self, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["gpg", "--batch", "--yes", "--quiet", "--trust-model", "always", *args],
                              input=stdin, env=self.env, capture_output=True, check=check)

    def encrypt(self, plain: Path, out: Path, *opts: str, recipients: tuple[str, ...] = ("EGA archive",),
                stdin: bool = False) -> Path:
        """Encrypt as a submitter would; ``stdin`` pipes the data so gpg uses partial body lengths."""
        rcpt = [arg for r in recipients for arg in ("-r", r)]
        if stdin:
            proc = self.run(*rcpt, *opts, "--encrypt", stdin=plain.read_bytes())
            out.write_bytes(proc.stdout)
        else:
            self.run(*rcpt, *opts, "--output", str(out), "--encrypt", str(plain))
        return out

    def list_packets(self, path: Path) -> str:
        # gpg cannot decrypt (no archive secret key here) but lists the outer packets first.
        return self.run("--list-packets", str(path), check=False).stdout.decode()


@pytest.fixture(scope="session")
def gpg(tmp_path_factory: pytest.TempPathFactory, archive_keys: ArchiveKeys):
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    g = Gpg(home, archive_keys.pgp_pub)
    yield g
    subprocess.run(["gpgconf", "--kill", "all"], env=g.env, capture_output=True)


@pytest.fixture
def c4gh_decrypt(archive_keys: ArchiveKeys):
    """Decrypt a Crypt4GH file with the reference CLI; returns the plaintext's sha256."""

    def decrypt(path: Path) -> str:
        env = {**os.environ, "C4GH_PASSPHRASE": PASSPHRASE}
        with open(path, "rb") as fh:
            proc = subprocess.run(["crypt4gh", "decrypt", "--sk", str(archive_keys.c4gh_sec)], stdin=fh,
                                  capture_output=True, env=env)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        return hashlib.sha256(proc.stdout).hexdigest()

    return decrypt
