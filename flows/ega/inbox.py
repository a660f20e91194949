"""The user's inbox: confined lookup of the uploaded file and its companion checksum files."""
from __future__ import annotations

from pathlib import Path

from tasks.checksum import parse_companion
from tasks.errors import UserError
from tasks.staging import confine

COMPANION_SUFFIXES = {".md5": "md5", ".sha256": "sha256"}


def resolve_upload(inbox_root: Path, user: str, filepath: str) -> Path:
    """``<inbox>/<user>/<filepath>``, refusing anything that leaves the user's inbox."""
    user_dir = confine(inbox_root, user)
    path = confine(user_dir, filepath)
    if not path.is_file():
        raise UserError("file not found in inbox")
    return path


def read_companion(target: Path) -> tuple[str, str] | None:
    """(algorithm, hex) from ``<target>.sha256`` or ``<target>.md5``; sha256 preferred."""
    for suffix in (".sha256", ".md5"):
        companion = target.with_name(target.name + suffix)
        if companion.is_file():
            algo = COMPANION_SUFFIXES[suffix]
            return algo, parse_companion(companion.read_text(errors="replace"), algo)
    return None


def companion_checksums(upload: Path) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """Encrypted checksum from ``file.gpg.md5``; plaintext from ``file.md5`` (last suffix dropped)."""
    encrypted = read_companion(upload)
    plain_target = upload.with_suffix("") if upload.suffix else None
    plaintext = read_companion(plain_target) if plain_target is not None else None
    return encrypted, plaintext
