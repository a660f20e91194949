"""Observation IDs as the SST pipeline (SSTRED) writes them: ``<DATE-BEG>_<FILTER1>_<scans>``.

Example: ``2019-04-16T08:20:18.96758_6173_0-36,38,39``. The scan list is SSTRED's
``red_collapserange`` form: runs of three or more consecutive scans become
``a-b``, shorter runs stay comma separated (so 38,39 is not written 38-39). The
exported cube's file name carries that very string after ``_scans=``, so the name
wins; the ``VAR-EXT-SCANNUM`` table is the fallback, then the SCANNUM keyword.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from tasks.errors import UserError

FILENAME_SCANS = re.compile(r"_scans=(?P<scans>[^_]+)")
_RANGE_TEXT = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def collapse_ranges(numbers: Iterable[int]) -> str:
    """Sorted, de-duplicated integers → ``0-36,38,39``."""
    values = sorted({int(n) for n in numbers})
    if not values:
        raise UserError("the scan list is empty")
    parts: list[str] = []
    start = prev = values[0]
    for n in values[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        if prev - start >= 2:
            parts.append(f"{start}-{prev}")
        else:
            parts.extend(str(v) for v in range(start, prev + 1))
        if n is not None:
            start = prev = n
    return ",".join(parts)


def expand_ranges(text: str) -> list[int]:
    """``0-3,7`` → [0, 1, 2, 3, 7]; the inverse of ``collapse_ranges``."""
    cleaned = text.strip().strip("[]")
    if not _RANGE_TEXT.match(cleaned):
        raise UserError(f"scan list {text!r} is not a comma/dash separated list of scan numbers")
    out: list[int] = []
    for part in cleaned.split(","):
        if "-" in part:
            lo, hi = (int(v) for v in part.split("-"))
            if hi < lo:
                raise UserError(f"scan range {part!r} runs backwards")
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(part))
    return out


def scans_from_filename(filename: str) -> str | None:
    """The ``_scans=`` part of an exported cube's name, validated, or None."""
    match = FILENAME_SCANS.search(filename)
    if not match:
        return None
    scans = match.group("scans")
    from flows.fits.names import fits_suffix

    suffix = fits_suffix(scans)                 # cube_scans=0-3.fits, .fits.gz, .fts ...
    if suffix:
        scans = scans[: -len(suffix)]
    expand_ranges(scans)  # validates
    return scans


def observation_id(primary_header, *, filename: str = "", scan_numbers: Iterable[int] | None = None,
                   oid: str | None = None) -> str:
    """The OID: a given one wins, else DATE-BEG, FILTER1 and the scan list.

    ``scan_numbers`` are the values of the VAR-EXT-SCANNUM table (see
    ``flows.fits.extensions.scan_numbers``); they are used only when the file name
    carries no ``_scans=``.
    """
    if oid:
        return _check_oid(oid.strip())
    # a space for the T (common practice) names the same instant: the OID is written the standard way
    date_beg = re.sub(r"^(\d{4}-\d{2}-\d{2}) +(?=\d)", r"\1T", _required_text(primary_header, "DATE-BEG"))
    filter1 = _required_text(primary_header, "FILTER1")
    scans = scans_from_filename(filename) if filename else None
    if scans is None and scan_numbers is not None:
        numbers = list(scan_numbers)
        scans = collapse_ranges(numbers) if numbers else None
    if scans is None:
        scannum = primary_header.get("SCANNUM")
        if scannum is None or str(scannum).strip() == "":
            raise UserError(
                "cannot build the observation id: no '_scans=' in the file name, no VAR-EXT-SCANNUM "
                "extension and no SCANNUM keyword"
            )
        scans = str(scannum).strip()
    return _check_oid(f"{date_beg}_{filter1}_{scans}")


def _required_text(header, keyword: str) -> str:
    value = header.get(keyword)
    text = "" if value is None else str(value).strip()
    if not text:
        raise UserError(f"cannot build the observation id: the primary header has no {keyword}")
    return text


def _check_oid(oid: str) -> str:
    # The SVO uses the oid as the last path segment of the record's URI.
    if not oid or "/" in oid or any(ord(c) < 0x20 or ord(c) == 0x7F for c in oid) or len(oid) > 191:
        raise UserError(f"invalid observation id {oid!r}: must be 1-191 printable characters without '/'")
    return oid
