"""PRONOM format identification with Siegfried (pygfried), offline, one call per bag.

pygfried embeds Siegfried and its PRONOM signature file, so identification needs
no network and no external binary. ``identify_many`` scans a whole list of
paths in one Go call (with Go-side workers), which is why the API is batched:
a bag is identified in one call, not one per file. When Siegfried has no
answer (UNKNOWN, or a match without a MIME type such as ELF executables), the
file's original name decides via ``mimetypes``, and failing that
``application/octet-stream``. The original name matters because staging keeps
files under UUID names.
"""
from __future__ import annotations

import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_MIME = "application/octet-stream"


@dataclass(frozen=True)
class FormatId:
    path: str
    puid: str | None  # PRONOM id, e.g. "fmt/19"; None when Siegfried found nothing
    mime: str  # never empty
    format_name: str  # e.g. "Acrobat PDF 1.5 - Portable Document Format"
    basis: str  # Siegfried's match basis, or how the fallback decided
    identified_by: str  # "siegfried <version>" | "mimetypes" | "default"
    warning: str = ""


@lru_cache(maxsize=1)
def _scanner() -> Any:
    import pygfried

    return pygfried.Scanner()


@lru_cache(maxsize=1)
def siegfried_version() -> str:
    import pygfried

    return pygfried.version()


def identify_files(
    paths: Sequence[str | Path],
    names: Sequence[str] | None = None,
    *,
    workers: int | None = None,
) -> list[FormatId]:
    """Identify every file in one Siegfried call; results are in the order of ``paths``.

    ``names`` are the files' original names (e.g. their path in the bag), used for
    the extension fallback when the files on disk have neutral names.
    """
    if not paths:
        return []
    if names is not None and len(names) != len(paths):
        raise ValueError("names must match paths one to one")
    str_paths = [os.fspath(p) for p in paths]
    workers = workers or min(4, os.cpu_count() or 1)
    report = _scanner().identify_many(str_paths, workers=workers)
    by_name: dict[str, dict[str, Any]] = {}
    for entry in report.get("files", []):
        by_name.setdefault(entry.get("filename", ""), entry)
    version = f"siegfried {report.get('siegfried') or siegfried_version()}"
    out = []
    for i, path in enumerate(str_paths):
        original = names[i] if names is not None else path
        out.append(_decide(path, original, by_name.get(path), version))
    return out


def identify_file(path: str | Path, name: str | None = None) -> FormatId:
    return identify_files([path], [name] if name is not None else None)[0]


def _decide(path: str, original: str, entry: dict[str, Any] | None, version: str) -> FormatId:
    match = _pronom_match(entry)
    puid = match.get("id") if match else None
    if puid in ("UNKNOWN", ""):
        puid = None
    sf_mime = (match or {}).get("mime") or ""
    if puid and sf_mime:
        return FormatId(path, puid, sf_mime, match.get("format", ""), match.get("basis", ""), version,
                        match.get("warning", ""))
    guessed, _ = mimetypes.guess_type(original, strict=False)
    warning = (entry or {}).get("errors") or (match or {}).get("warning", "")
    if guessed:
        return FormatId(path, puid, guessed, (match or {}).get("format", ""),
                        f"extension {Path(original).suffix}", "mimetypes", warning)
    return FormatId(path, puid, DEFAULT_MIME, (match or {}).get("format", ""), "no match", "default", warning)


def _pronom_match(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    if not entry:
        return None
    matches = entry.get("matches") or []
    return next((m for m in matches if m.get("ns") == "pronom"), matches[0] if matches else None)
