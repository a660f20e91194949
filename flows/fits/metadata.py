"""Header keywords → one typed column per known keyword.

The known keywords and their types are data (keywords.json: the SVO SST dataset
keywords plus the SOLARNET ones the SST pipeline writes), so adding a keyword is
a data change. Column names follow the SST archive: lower case with ``-``, space
and ``.`` turned into ``_`` (``DATE-BEG`` → ``date_beg``, ``DW3.AXIS.1`` →
``dw3_axis_1``). Keywords we do not know are never dropped: the full header text
is stored, and their names are returned so the flow can log them.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.errors import UserError

KEYWORDS_FILE = Path(__file__).with_name("keywords.json")
TYPES = ("text", "integer", "real", "datetime")
# Cards that describe the FITS structure itself; listing them as "unknown" would only be noise.
STRUCTURAL = frozenset({"SIMPLE", "BITPIX", "EXTEND", "END", "CHECKSUM", "DATASUM", "CONTINUE", "PCOUNT",
                        "GCOUNT", "XTENSION", "TFIELDS", "GROUPS", "BSCALE", "BZERO", "BLANK"})
COMMENTARY = frozenset({"COMMENT", "HISTORY", ""})
_COLUMN_RE = re.compile(r"[-. ]")


@dataclass(frozen=True)
class Keyword:
    keyword: str
    column: str
    type: str
    unit: str = ""
    description: str = ""


@dataclass
class Metadata:
    columns: dict[str, Any]                 # column → typed value (None when the card had no value)
    unknown: list[str] = field(default_factory=list)  # header keywords with no column; kept in header_text
    header_text: str = ""


def column_name(keyword: str) -> str:
    return _COLUMN_RE.sub("_", str(keyword).lower())


@lru_cache(maxsize=4)
def known_keywords(path: str | None = None) -> dict[str, Keyword]:
    """column → Keyword, from the data file."""
    doc = json.loads(Path(path or KEYWORDS_FILE).read_text(encoding="utf-8"))
    table: dict[str, Keyword] = {}
    for row in doc["keywords"]:
        if row["type"] not in TYPES:
            raise ValueError(f"keywords file: {row['keyword']} has unknown type {row['type']!r}")
        col = column_name(row["keyword"])
        if col in table:
            raise ValueError(f"keywords file: {row['keyword']} and {table[col].keyword} share column {col}")
        table[col] = Keyword(row["keyword"], col, row["type"], row.get("unit", ""), row.get("description", ""))
    return table


def header_text(header) -> str:
    return header.tostring(sep="\n")


def extract_metadata(header, keywords: dict[str, Keyword] | None = None) -> Metadata:
    """Typed columns for the known keywords; a value that does not fit its type is a UserError."""
    table = keywords if keywords is not None else known_keywords()
    columns: dict[str, Any] = {}
    unknown: list[str] = []
    for card in header.cards:
        key = str(card.keyword)
        upper = key.upper()
        if upper in COMMENTARY:
            continue
        col = column_name(key)
        spec = table.get(col)
        if spec is None or col in columns:
            # A second card with the same column (say HGLN-OBS next to HGLN_OBS) stays in the text only.
            if upper not in STRUCTURAL and key not in unknown:
                unknown.append(key)
            continue
        columns[col] = convert(card.value, spec)
    return Metadata(columns=columns, unknown=unknown, header_text=header_text(header))


def convert(value: Any, spec: Keyword) -> Any:
    """One card value → the column's Python type."""
    if value is None or _is_undefined(value):
        return None
    if isinstance(value, str) and value.strip() == "" and spec.type != "text":
        return None
    try:
        if spec.type == "text":
            return str(value).rstrip() if isinstance(value, str) else _format_scalar(value)
        if spec.keyword.upper() == "WAVEUNIT" and isinstance(value, str):
            return wave_unit_exponent(value)
        if spec.type == "integer":
            return _to_int(value)
        if spec.type == "real":
            return _to_float(value)
        return parse_datetime(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UserError(
            f"keyword {spec.keyword} = {value!r} is not a valid {_TYPE_WORDS[spec.type]} ({exc})"
        ) from exc


_TYPE_WORDS = {"integer": "integer", "real": "real number", "datetime": "date-time", "text": "text value"}


# WAVEUNIT is the power of ten of the wavelength unit in metres (SOLARNET); many files write the unit.
WAVE_UNITS = {"m": 0, "cm": -2, "mm": -3, "um": -6, "µm": -6, "micron": -6, "microns": -6, "micrometer": -6,
              "micrometre": -6, "nm": -9, "nanometer": -9, "nanometre": -9, "angstrom": -10, "angstroms": -10,
              "ångström": -10, "aa": -10, "a": -10, "pm": -12, "picometer": -12, "picometre": -12}


def wave_unit_exponent(value: str) -> int:
    """``'angstrom'`` → -10, ``'nm'`` → -9, ``'-10'`` → -10: WAVEUNIT as the integer the standard means."""
    text = value.strip()
    try:
        return _to_int(text)
    except ValueError:
        pass
    exponent = WAVE_UNITS.get(text.lower())
    if exponent is None:
        raise ValueError(f"neither a power of ten nor a known length unit ({', '.join(sorted(WAVE_UNITS))})")
    return exponent


def parse_datetime(value: Any) -> dt.datetime:
    """ISO 8601 as FITS writes it, ``%Y-%m-%dT%H:%M:%S[.%f]``; a bare ``%Y-%m-%d`` (allowed by FITS) means
    midnight. Common practice is accepted too: a space instead of the ``T`` and a trailing ``Z`` (FITS
    times are UTC anyway). The two-digit-year ``DD/MM/YY`` of pre-2000 files stays refused: it is
    ambiguous, and the keywords we type (DATE-BEG, ...) postdate it."""
    if isinstance(value, dt.datetime):
        return value
    text = str(value).strip()
    text = re.sub(r"^(\d{4}-\d{2}-\d{2})[ ]+(?=\d{2}:)", r"\1T", text)
    if text.endswith("Z"):
        text = text[:-1]
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    # More than six fractional digits (FITS allows any precision): keep microseconds.
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d+)", text)
    if match:
        return dt.datetime.strptime(f"{match.group(1)}.{match.group(2)[:6]}", "%Y-%m-%dT%H:%M:%S.%f")
    raise ValueError("expected YYYY-MM-DDThh:mm:ss[.ffffff]")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("has a fractional part")
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise TypeError(f"a {type(value).__name__} is not a number")


def _to_float(value: Any) -> float:
    if isinstance(value, complex):
        raise TypeError("a complex value is not a real number")
    number = float(value.strip()) if isinstance(value, str) else float(value)
    if math.isnan(number) or math.isinf(number):
        raise ValueError("not finite")
    return number


def _format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    return str(value)


def _is_undefined(value: Any) -> bool:
    from astropy.io.fits.card import Undefined

    return isinstance(value, Undefined)
