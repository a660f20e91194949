"""Small helpers shared by the crypto tests (a uniquely named module: tests/ has no packages)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

PASSPHRASE = "correct horse battery staple"


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample(path: Path, size: int, *, compressible: bool = False) -> Path:
    """Random bytes, or text-like bytes that deflate/bzip2 actually shrink."""
    if compressible:
        line = b"@read ACGTTGCAACGTGGCCTTAAGG\n"
        data = (line * (size // len(line) + 1))[:size]
        data = data[: size // 2] + os.urandom(size - size // 2) if size > 64 else data
    else:
        data = os.urandom(size)
    path.write_bytes(data)
    return path
