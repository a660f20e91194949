"""A small SST-like cube for the demo and benchmarks: real structure, synthetic numbers.

Product code must not import the tests, so this is its own small synthesizer: a
5-D cube (x, y, wavelength, Stokes, scan) with the keywords the ingest reads, the
VAR-EXT-SCANNUM / VAR-EXT-ATMOS_R0 / VAR-EXT-DATAMEDN tables and CHECKSUM/DATASUM
on every HDU. The middle wavelength of scan 0, Stokes I holds a limb-darkened
disc with a dark spot, so the rendered preview shows something sun-like.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SampleCube:
    instrument: str = "CRISP"
    date_beg: str = "2019-04-16T08:20:18.96758"
    filter1: str = "6173"
    point_id: str = "2019-04-16T08:19:53"
    release: str | None = "2020-11-12"
    release_comment: str = ("Data acquired within the SOLARNET Trans-National Access programme; please "
                            "acknowledge the Swedish 1-m Solar Telescope in any publication that uses these data")
    features: str | None = "Sunspot,Plage"
    events: str | None = None
    scans: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 5])
    nx: int = 64
    ny: int = 48
    n_wave: int = 5
    n_stokes: int = 4


def filename(spec: SampleCube, suffix: str = "") -> str:
    from flows.fits.oid import collapse_ranges

    scans = collapse_ranges(spec.scans)
    return f"nb_{spec.filter1}_{spec.date_beg[:19]}_scans={scans}_stokes_corrected_im{suffix}.fits"


def write_sample_cube(directory: str | Path, spec: SampleCube | None = None, *, name: str | None = None) -> Path:
    from astropy.io import fits

    spec = spec or SampleCube()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or filename(spec))
    hdus = [fits.PrimaryHDU(data=_data(spec), header=_header(spec)), *_extensions(spec)]
    fits.HDUList(hdus).writeto(path, checksum=True, overwrite=True)
    return path


def _data(spec: SampleCube) -> np.ndarray:
    n_scan = len(spec.scans)
    y, x = np.mgrid[0:spec.ny, 0:spec.nx].astype(np.float32)
    r = np.hypot((x - spec.nx / 2) / (spec.nx / 2), (y - spec.ny / 2) / (spec.ny / 2))
    disc = np.where(r < 1, np.sqrt(np.clip(1 - r**2, 0, 1)), 0.0).astype(np.float32)
    spot = np.exp(-(((x - spec.nx * 0.6) ** 2 + (y - spec.ny * 0.45) ** 2) / (0.01 * spec.nx * spec.ny)))
    frame = 1000.0 * disc * (1 - 0.7 * spot)
    profile = 1 - 0.5 * np.exp(-((np.arange(spec.n_wave) - spec.n_wave // 2) ** 2) / 2.0)
    data = np.empty((n_scan, spec.n_stokes, spec.n_wave, spec.ny, spec.nx), dtype=np.float32)
    data[:] = frame
    data *= profile[None, None, :, None, None].astype(np.float32)
    data[:, 1:] *= 0.01
    return data


def _header(spec: SampleCube):
    from astropy.io import fits

    h = fits.Header()
    h["DATE-BEG"] = (spec.date_beg, "Beginning time of observation")
    h["DATE-END"] = ("2019-04-16T08:39:08.56667", "End time of observation")
    h["DATEREF"] = ("2019-04-16T00:00:00.000000", "Reference time in ISO-8601")
    h["TELESCOP"] = "Swedish 1-meter Solar Telescope (SST)"
    h["INSTRUME"] = spec.instrument
    h["FILTER1"] = spec.filter1
    h["POINT_ID"] = spec.point_id
    h["WAVELNTH"] = (617.3, "[nm] Prefilter peak wavelength")
    h["XPOSURE"] = 0.486017
    h["CADENCE"] = 21.9216
    h["OBS_HDU"] = 1
    h["OBJECT"] = "Sun"
    h["BTYPE"] = "Intensity"
    h["CTYPE3"], h["CRVAL3"], h["CDELT3"], h["CRPIX3"] = "WAVE", 617.293, 0.0035, 1
    h["SCANNUM"] = (spec.scans[0], "Scan number (first value)")
    if spec.release is not None:
        h["RELEASE"] = spec.release
        h["RELEASEC"] = spec.release_comment
    if spec.features is not None:
        h["FEATURES"] = spec.features
    if spec.events is not None:
        h["EVENTS"] = spec.events
    return h


def _table(name: str, columns: list[tuple[str, str, str, np.ndarray]]):
    from astropy.io import fits

    return fits.BinTableHDU.from_columns([fits.Column(name=n, format=f, dim=d, array=a) for n, f, d, a in columns],
                                         name=name)


def _extensions(spec: SampleCube) -> list:
    n_scan, n_wave = len(spec.scans), spec.n_wave
    scans = np.array(spec.scans, dtype=np.int32).reshape(1, n_scan, 1, 1, 1, 1)
    n = 2 * n_scan
    r0 = np.stack([np.linspace(0.05, 0.10, n), np.linspace(0.07, 0.12, n)], axis=1).reshape(1, n, 2)
    times = (30018.9 + 10.0 * np.arange(n)).reshape(1, n, 1)
    median = np.zeros((1, n_scan, 1, n_wave, 1, 1))
    median[0, :, 0, :, 0, 0] = (1 - 0.5 * np.exp(-((np.arange(n_wave) - n_wave // 2) ** 2) / 2.0))[None, :]
    return [
        _table("VAR-EXT-SCANNUM", [("SCANNUM", f"{n_scan}J", f"(1,1,1,1,{n_scan})", scans)]),
        _table("VAR-EXT-ATMOS_R0", [("ATMOS_R0", f"{2 * n}E", f"(2,{n})", r0),
                                    ("TIME-ATMOS_R0", f"{n}D", f"(1,{n})", times)]),
        _table("VAR-EXT-DATAMEDN", [("DATAMEDN", f"{median[0].size}E", f"(1,1,{n_wave},1,{n_scan})", median)]),
    ]
