"""Which file names are FITS files, and a plain FITS view of a gzip-compressed one.

Archives name FITS files ``.fits``, ``.fit`` and ``.fts``; fpack writes ``.fz``
(a FITS file whose images are tile-compressed HDUs, which astropy reads as it is);
and whole files are often gzipped (``.fits.gz``). Only the gzip layer needs work:
astropy can read through it, but cannot memory-map it, so every later data read
(DATASUM over the whole data unit, the preview frame) would load data units into
memory. A gzipped cube is therefore decompressed once per attempt, in a stream of
fixed-size blocks, into a staged plain file that the steps read instead; the
registry, the SVO and the change key keep describing the stored ``.gz`` file.
"""
from __future__ import annotations

import gzip
import os
import shutil
import zlib
from pathlib import Path

from tasks.errors import UserError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz")
GZIP_SUFFIX = ".gz"
GZIP_MAGIC = b"\x1f\x8b"
BLOCK = 4 << 20


# longest first, so ``cube.fits.fz`` has the stem ``cube``
_ALL_SUFFIXES = tuple(sorted({b + c for b in (".fits", ".fit", ".fts") for c in ("", ".fz", GZIP_SUFFIX)}
                             | {".fz"}, key=len, reverse=True))


def fits_suffix(name: str) -> str | None:
    """The FITS suffix of a file name (``.fits.gz``, ``.fits.fz``, ``.fts``, ...), or None when it is not
    a FITS name."""
    lower = name.lower()
    for suffix in _ALL_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return name[-len(suffix):]
    return None


def is_fits_name(name: str) -> bool:
    return fits_suffix(name) is not None


def fits_stem(name: str) -> str:
    """The name without its FITS suffix (``cube.fits.gz`` → ``cube``): previews and siblings use it."""
    suffix = fits_suffix(name)
    return name[: -len(suffix)] if suffix else Path(name).stem


def is_gzipped(name: str) -> bool:
    return name.lower().endswith(GZIP_SUFFIX)


def accepted_names() -> str:
    return ", ".join(FITS_SUFFIXES + tuple(s + GZIP_SUFFIX for s in FITS_SUFFIXES[:3]))


def decompress(source: Path, target: Path) -> Path:
    """Stream ``source`` (gzip) into ``target`` through a ``.part`` file: memory stays one block.

    A file that is not gzip, or whose stream is cut short or corrupt, is a UserError naming it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with open(source, "rb") as raw:
            if raw.read(2) != GZIP_MAGIC:
                raise UserError(f"{source.name} is named like a gzip file but is not one")
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream, open(part, "wb") as out:
                shutil.copyfileobj(stream, out, BLOCK)
                out.flush()
                os.fsync(out.fileno())
        os.replace(part, target)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise UserError(f"{source.name} is not a readable gzip file: {exc}") from exc
    finally:
        part.unlink(missing_ok=True)
    return target
