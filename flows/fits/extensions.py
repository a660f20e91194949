"""The small SOLARNET variable-keyword tables of an SST cube, as JSON-able data.

An SST cube carries per-scan values of some keywords in binary-table extensions
(``VAR-EXT-<KEYWORD>``, one row, the values in column 1 shaped like the data
axes x, y, wavelength, Stokes, scan; astropy reverses that order). These tables
are kilobytes while the cube is gigabytes, so only they are read, each through
the lazy HDU list, and each is refused above a size cap.

Shapes follow the SST archive's viewers: the r0 plot data (version 4: r0 per
time, milliseconds since the epoch) and the spectral line profile (version 3:
wavelength and the median intensity per wavelength averaged over scans).
"""
from __future__ import annotations

import datetime as dt
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import UserError

MAX_EXTENSION_BYTES = 64 << 20
SCANNUM_EXT = "VAR-EXT-SCANNUM"
R0_EXT = "VAR-EXT-ATMOS_R0"
DATAMEDN_EXT = "VAR-EXT-DATAMEDN"
WCS_TAB_EXT = "WCS-TAB"


@dataclass(frozen=True)
class ExtensionData:
    scan_numbers: list[int] | None
    r0: dict[str, Any] | None
    line_profile: dict[str, Any] | None


@contextmanager
def open_cube(path: str | Path):
    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with fits.open(path, lazy_load_hdus=True, memmap=True, mode="readonly") as hdul:
                yield hdul
        except UserError:
            raise
        except OSError as exc:
            raise UserError(f"{Path(path).name} is not a readable FITS file: {exc}") from exc


def read_extension_data(path: str | Path, max_bytes: int = MAX_EXTENSION_BYTES) -> ExtensionData:
    """Scan numbers, r0 series and line profile, each None when its extension is absent."""
    with open_cube(path) as hdul:
        return ExtensionData(
            scan_numbers=scan_numbers(hdul, max_bytes),
            r0=r0_series(hdul, max_bytes),
            line_profile=spectral_line_profile(hdul, max_bytes),
        )


def scan_numbers(hdul, max_bytes: int = MAX_EXTENSION_BYTES) -> list[int] | None:
    """One scan number per scan, in file order, from VAR-EXT-SCANNUM."""
    values = _first_column(hdul, SCANNUM_EXT, max_bytes)
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim == 0 or arr.size == 0:
        raise UserError(f"{SCANNUM_EXT} holds no scan numbers")
    per_scan = arr.reshape(arr.shape[0], -1)[:, 0]
    if not np.all(np.isfinite(per_scan.astype(float))) or np.any(per_scan.astype(float) % 1 != 0):
        raise UserError(f"{SCANNUM_EXT} holds values that are not whole scan numbers")
    return [int(v) for v in per_scan]


def r0_series(hdul, max_bytes: int = MAX_EXTENSION_BYTES) -> dict[str, Any] | None:
    """r0 against time: ``{"version": 4, "data": {"r0_low": [[ms, r0], ...], "r0_low_high": [...]}}``."""
    hdu = _table_hdu(hdul, R0_EXT, max_bytes)
    if hdu is None:
        return None
    ref = _dateref(hdul[0].header)
    data = hdu.data
    name = hdu.header.get("TTYPE1")
    time_name = f"TIME-{name}" if name else None
    names = [c.upper() for c in data.columns.names]
    if not name or time_name is None or time_name.upper() not in names:
        raise UserError(f"{R0_EXT} must have the r0 column and its TIME-{name or 'ATMOS_R0'} column")
    values = np.asarray(data.field(name)[0], dtype=float)
    times = np.asarray(data.field(time_name)[0], dtype=float).reshape(-1)
    values = values.reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    if values.shape[0] != times.size:
        raise UserError(f"{R0_EXT} has {values.shape[0]} r0 samples but {times.size} times")
    stamps = [_epoch_ms(ref, seconds) for seconds in times]
    series: dict[str, list[list[float]]] = {}
    for column, key in enumerate(("r0_low", "r0_low_high")[: values.shape[1]]):
        series[key] = [[stamps[i], _json_float(values[i, column])] for i in range(values.shape[0])]
    return {"version": 4, "data": series}


def spectral_line_profile(hdul, max_bytes: int = MAX_EXTENSION_BYTES) -> dict[str, Any] | None:
    """Median intensity per wavelength point, averaged over scans, with the wavelengths in nm."""
    values = _first_column(hdul, DATAMEDN_EXT, max_bytes)
    if values is None:
        return None
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 5:
        raise UserError(f"{DATAMEDN_EXT} must be shaped like the 5-D cube, got {arr.ndim} dimensions")
    # astropy order: (scan, stokes, wavelength, y, x); Stokes I, first pixel of the per-scan value.
    per_scan = arr[:, 0, :, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        amplitudes = np.nanmean(per_scan, axis=0)
    n_wave = amplitudes.size
    return {
        "version": 3,
        "data": {
            "wavelengths": _wavelengths(hdul, n_wave, max_bytes),
            "amplitude_values": [_json_float(v) for v in amplitudes],
        },
    }


# ---------------------------------------------------------------- helpers


def _table_hdu(hdul, name: str, max_bytes: int):
    try:
        index = hdul.index_of(name)
    except KeyError:
        return None
    hdu = hdul[index]
    span = int(hdul.fileinfo(index)["datSpan"])
    if span > max_bytes:
        raise UserError(f"extension {name} is {span} bytes, above the {max_bytes}-byte limit for auxiliary tables")
    if not hasattr(hdu, "columns"):
        raise UserError(f"extension {name} is not a table")
    return hdu


def _first_column(hdul, name: str, max_bytes: int):
    hdu = _table_hdu(hdul, name, max_bytes)
    if hdu is None:
        return None
    column = hdu.header.get("TTYPE1")
    if not column or hdu.data is None or len(hdu.data) == 0:
        raise UserError(f"extension {name} has no data in its first column")
    return np.array(hdu.data.field(column)[0])  # copy: the file is closed after this


def _wavelengths(hdul, n_wave: int, max_bytes: int) -> list[float] | None:
    header = hdul[0].header
    ctype3 = str(header.get("CTYPE3", "")).upper()
    if ctype3.endswith("-TAB"):
        hdu = _table_hdu(hdul, WCS_TAB_EXT, max_bytes)
        if hdu is None:
            return None
        ttype = str(hdu.header.get("TTYPE1", ""))
        coords = ttype.split("+")
        if "WAVE" not in coords:
            raise UserError(f"{WCS_TAB_EXT} column {ttype!r} tabulates no WAVE coordinate")
        table = np.asarray(hdu.data.field(ttype)[0], dtype=float)
        # astropy order: ([time,] wavelength, hplt, hpln, coordinate)
        if table.ndim == 5:
            table = table[0]
        if table.ndim != 4 or table.shape[0] != n_wave:
            raise UserError(f"{WCS_TAB_EXT} does not tabulate {n_wave} wavelength points")
        return [_json_float(v) for v in table[:, 0, 0, coords.index("WAVE")]]
    try:
        crval, cdelt, crpix = (float(header[k]) for k in ("CRVAL3", "CDELT3", "CRPIX3"))
    except (KeyError, TypeError, ValueError):
        return None
    return [_json_float(crval + (i + 1 - crpix) * cdelt) for i in range(n_wave)]


def _dateref(header) -> dt.datetime:
    raw = header.get("DATEREF")
    if not raw:
        raise UserError(f"{R0_EXT} times are relative to DATEREF, which the primary header lacks")
    from flows.fits.metadata import parse_datetime

    try:
        return parse_datetime(raw).replace(tzinfo=dt.timezone.utc)
    except ValueError as exc:
        raise UserError(f"DATEREF={raw!r} is not an ISO date-time") from exc


def _epoch_ms(ref: dt.datetime, seconds: float) -> int:
    if not math.isfinite(seconds):
        raise UserError(f"{R0_EXT} has a non-finite time")
    return round((ref + dt.timedelta(seconds=float(seconds))).timestamp() * 1000)


def _json_float(v) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None
