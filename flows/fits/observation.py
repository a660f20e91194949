"""Which instrument took a cube and which observation (pointing) it belongs to.

Cubes from one pointing share a POINT_ID; the SST pipeline marks combined
products by suffixing the POINT_ID (and the exported file name) with
``_grouped`` or ``_mosaic``. Older cubes lack POINT_ID, so their DATE-BEG is the
observation key.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath

from tasks.errors import UserError

# Seeded instruments; the SVO dataset of each has the same name.
KNOWN_INSTRUMENTS: tuple[str, ...] = ("CRISP", "CHROMIS")


class GroupingTag(StrEnum):
    NONE = "none"
    GROUPED = "grouped"
    MOSAIC = "mosaic"


@dataclass(frozen=True)
class Observation:
    key: str                 # POINT_ID, or DATE-BEG when there is none
    grouping: GroupingTag


def instrument_name(primary_header, known: tuple[str, ...] = KNOWN_INSTRUMENTS) -> str:
    """The canonical instrument name for INSTRUME (case-insensitive)."""
    raw = primary_header.get("INSTRUME")
    name = "" if raw is None else str(raw).strip()
    if not name:
        raise UserError("the primary header has no INSTRUME keyword, so the instrument is unknown")
    for candidate in known:
        if candidate.upper() == name.upper():
            return candidate
    raise UserError(f"unknown instrument INSTRUME={name!r}; known instruments: {', '.join(known)}")


def grouping_tag(point_id: str | None, filename: str = "") -> GroupingTag:
    """``_grouped`` / ``_mosaic`` at the end of POINT_ID or of the file name's stem."""
    candidates = [point_id or "", PurePath(filename).stem if filename else ""]
    for text in candidates:
        lowered = text.strip().lower()
        if lowered.endswith("_grouped"):
            return GroupingTag.GROUPED
        if lowered.endswith("_mosaic"):
            return GroupingTag.MOSAIC
    return GroupingTag.NONE


def observation(primary_header, filename: str = "") -> Observation:
    point_id = primary_header.get("POINT_ID")
    key = "" if point_id is None else str(point_id).strip()
    if not key:
        date_beg = primary_header.get("DATE-BEG")
        key = "" if date_beg is None else str(date_beg).strip()
    if not key:
        raise UserError("the primary header has neither POINT_ID nor DATE-BEG, so the observation is unknown")
    return Observation(key=key, grouping=grouping_tag(key, filename))
