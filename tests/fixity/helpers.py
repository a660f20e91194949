"""What the fixity tests share: the CLI in-process, SQL, a flipped byte."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any


def cli(*argv: str) -> tuple[int, Any]:
    """``python flows/run.py …`` in this process: (exit code, the last stdout line as JSON)."""
    from flows.run import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines else None


def sql(dsn: str, query: str, *params: Any) -> list[dict[str, Any]]:
    from tasks.registry import Registry

    with Registry(dsn) as r:
        return r.execute(query, params or None)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """One bit pattern changed in place; size and mtime-based shortcuts see nothing."""
    size = path.stat().st_size
    offset = size // 2 if offset is None else offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))
