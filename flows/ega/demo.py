"""Demo input for the EGA flow: a sample file encrypted to the archive key, then one ingest."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tasks.home import home_path


def encrypt_for_archive(plain: Path, out: Path, public_key: Path) -> None:
    """Encrypt as a submitter would: with the gpg CLI when present, else pgpy (small files only)."""
    if shutil.which("gpg"):
        with tempfile.TemporaryDirectory() as gnupg:
            base = ["gpg", "--homedir", gnupg, "--batch", "--quiet", "--yes", "--no-autostart"]  # no agent to outlive us
            subprocess.run(base + ["--import", str(public_key)], check=True, capture_output=True)
            subprocess.run(base + ["--trust-model", "always", "--cipher-algo", "AES256", "--compress-algo", "none",
                                   "--encrypt", "--recipient-file", str(public_key), "-o", str(out), str(plain)],
                           check=True, capture_output=True)
        return
    import pgpy

    key, _ = pgpy.PGPKey.from_file(str(public_key))
    message = pgpy.PGPMessage.new(plain.read_bytes(), file=True)
    out.write_bytes(bytes(key.encrypt(message)))


def run_demo() -> dict[str, Any]:
    from flows.ega.cli import run_message

    user_dir = home_path("inbox") / "demo-user"
    user_dir.mkdir(parents=True, exist_ok=True)
    plain = user_dir / "sample.txt"
    plain.write_bytes(b"".join(f"read {i:06d} ACGTACGTTTGACCA\n".encode() for i in range(20000)) + os.urandom(64))
    encrypted = user_dir / "sample.txt.gpg"
    encrypt_for_archive(plain, encrypted, home_path("keys") / "ega.pub.asc")
    plain_sha256 = hashlib.sha256(plain.read_bytes()).hexdigest()
    plain.unlink()  # submitters upload only the encrypted file
    message = {
        "user": "demo-user", "filepath": "sample.txt.gpg", "stable_id": "EGAF00000000001",
        "encrypted_integrity": {"checksum": hashlib.md5(encrypted.read_bytes()).hexdigest(), "algorithm": "md5"},
        "unencrypted_integrity": {"checksum": plain_sha256, "algorithm": "sha256"},
    }
    code, summary = run_message(message, correlation_id="demo")
    keys = home_path("keys")
    if summary.get("vault_uri", "") and str(summary["vault_uri"]).startswith("file://"):
        summary["check_with"] = (f"crypt4gh decrypt --sk {keys / 'vault.c4gh.sec'} "
                                 f"< {summary['vault_uri'][len('file://'):]} | sha256sum   "
                                 f"# expect {plain_sha256}; passphrase in {keys / 'passphrase'}")
    summary["outbox"] = str(home_path("outbox"))
    if code:
        raise RuntimeError(f"EGA demo ingest failed: {summary.get('error')}")
    return summary
