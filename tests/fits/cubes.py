"""Synthesize small SST-like cubes: 5-D data, SST keywords and the SOLARNET extension tables.

Layout as the SST pipeline exports it: NAXIS1..5 = x, y, wavelength (tuning),
Stokes, scan (astropy's array is (scan, stokes, wavelength, y, x)); the primary
header carries the SVO keywords, a long RELEASEC continued over CONTINUE cards,
HIERARCH and record-valued DW3 cards; extensions VAR-EXT-SCANNUM,
VAR-EXT-ATMOS_R0, VAR-EXT-DATAMEDN and WCS-TAB; CHECKSUM/DATASUM everywhere.

The value of pixel (scan, stokes, wave, y, x) is ``1000*scan + 100*stokes + 10*wave``
plus ``x`` on the middle wavelength of scan 0, Stokes I, so a preview of the
right frame is a left-to-right gradient and any other frame is flat.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class CubeSpec:
    instrument: str = "CRISP"
    date_beg: str = "2019-04-16T08:20:18.96758"
    filter1: str = "6173"
    point_id: str | None = "2019-04-16T08:19:53"
    nx: int = 16
    ny: int = 12
    n_wave: int = 5
    n_stokes: int = 4
    scans: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 5, 6])
    release: str | None = "2020-11-12"
    release_comment: str | None = ("Data acquired within the SOLARNET Trans-National Access programme; "
                                   "please acknowledge the Swedish 1-m Solar Telescope and the Institute for "
                                   "Solar Physics in any publication that uses these data")
    features: str | None = "Sunspot,polar region"
    events: str | None = "Flare"
    extra: dict[str, Any] = field(default_factory=dict)
    scannum_ext: bool = True
    r0_ext: bool = True
    datamedn_ext: bool = True
    wcs_tab: bool = True
    checksum: bool = True


def cube_data(spec: CubeSpec) -> np.ndarray:
    n_scan = len(spec.scans)
    s, k, w = np.meshgrid(np.arange(n_scan), np.arange(spec.n_stokes), np.arange(spec.n_wave), indexing="ij")
    base = (1000.0 * s + 100.0 * k + 10.0 * w).astype(np.float32)
    data = np.broadcast_to(base[..., None, None], (n_scan, spec.n_stokes, spec.n_wave, spec.ny, spec.nx)).copy()
    data[0, 0, spec.n_wave // 2] += np.arange(spec.nx, dtype=np.float32)[None, :]
    return data


def primary_header(spec: CubeSpec, data_shape: tuple[int, ...] | None = None):
    from astropy.io import fits

    h = fits.Header()
    h["DATE-BEG"] = (spec.date_beg, "Beginning time of observation")
    h["DATE-END"] = ("2019-04-16T08:39:08.56667", "End time of observation (last value)")
    h["DATE-AVG"] = ("2019-04-16T08:30:22.77481", "Average time of observation")
    h["DATEREF"] = ("2019-04-16T00:00:00.000000", "Reference time in ISO-8601")
    h["TELESCOP"] = "Swedish 1-meter Solar Telescope (SST)"
    h["INSTRUME"] = spec.instrument
    h["FILTER1"] = spec.filter1
    if spec.point_id is not None:
        h["POINT_ID"] = spec.point_id
    h["WAVELNTH"] = (617.3, "[nm] Prefilter peak wavelength")
    h["WAVEMIN"] = 617.13
    h["WAVEMAX"] = 617.47
    h["XPOSURE"] = 0.486017
    h["TEXPOSUR"] = 0.0173612
    h["NSUMEXP"] = 28.0
    h["CADENCE"] = 21.9216
    h["OBS_HDU"] = 1
    h["OBSERVER"] = "A. Observer, B. Observer"
    h["OBJECT"] = "Sun"
    h["OBS_MODE"] = "Spectropolarimetry"
    h["BTYPE"] = "Intensity"
    h["BUNIT"] = "W m^-2 Hz^-1 sr^-1"
    h["CTYPE1"], h["CTYPE2"], h["CTYPE3"] = "HPLN-TAB", "HPLT-TAB", ("WAVE-TAB" if spec.wcs_tab else "WAVE")
    h["CTYPE4"], h["CTYPE5"] = "STOKES", "UTC--TAB"
    h["CDELT1"], h["CDELT2"], h["CDELT3"] = 1, 1, (1 if spec.wcs_tab else 0.0035)
    h["CRVAL1"], h["CRVAL2"], h["CRVAL3"] = 0, 0, (0 if spec.wcs_tab else 617.293)
    h["CRPIX3"] = 0 if spec.wcs_tab else 1
    h["HGLN_OBS"] = 0.0
    h["SCANNUM"] = (spec.scans[0], "Scan number (first value)")
    h.append(fits.Card("HIERARCH DW3 NAME", "Cavity error", "Type of correction"))
    h.append(fits.Card("HIERARCH DW3 AXIS1", 1, "Spatial X"))
    h.append(fits.Card.fromstring("DW3     = 'AXIS.1: 1'          / Spatial X"))
    if spec.release is not None:
        h["RELEASE"] = spec.release
    if spec.release_comment is not None:
        h["RELEASEC"] = spec.release_comment        # > 68 chars: astropy writes CONTINUE cards
    if spec.features is not None:
        h["FEATURES"] = spec.features
    if spec.events is not None:
        h["EVENTS"] = spec.events
    h["SOMEKEY"] = ("not an SVO keyword", "kept in the header text only")
    for key, value in spec.extra.items():
        h[key] = value
    return h


def _table(name: str, columns: list[tuple[str, str, str, np.ndarray]]):
    from astropy.io import fits

    cols = [fits.Column(name=n, format=f, dim=d, array=a) for n, f, d, a in columns]
    hdu = fits.BinTableHDU.from_columns(cols, name=name)
    return hdu


def extension_hdus(spec: CubeSpec) -> list:
    n_scan, n_wave = len(spec.scans), spec.n_wave
    hdus = []
    if spec.wcs_tab:
        coords = np.zeros((1, n_scan, n_wave, 2, 2, 4))
        wave = 617.293 + 0.0035 * (np.arange(n_wave) - n_wave // 2)
        coords[..., 2] = wave[None, None, :, None, None]
        coords[..., 3] = (np.arange(n_scan) * 21.9)[None, :, None, None, None]
        hdus.append(_table("WCS-TAB", [("HPLN+HPLT+WAVE+TIME", f"{coords[0].size}D",
                                        f"(4,2,2,{n_wave},{n_scan})", coords)]))
    if spec.scannum_ext:
        arr = np.array(spec.scans, dtype=np.int32).reshape(1, n_scan, 1, 1, 1, 1)
        hdus.append(_table("VAR-EXT-SCANNUM", [("SCANNUM", f"{n_scan}J", f"(1,1,1,1,{n_scan})", arr)]))
    if spec.r0_ext:
        n = 2 * n_scan
        r0 = np.stack([np.linspace(0.05, 0.10, n), np.linspace(0.07, 0.12, n)], axis=1).reshape(1, n, 2)
        t = (30018.9 + 10.0 * np.arange(n)).reshape(1, n, 1)
        hdus.append(_table("VAR-EXT-ATMOS_R0", [("ATMOS_R0", f"{2 * n}E", f"(2,{n})", r0),
                                                ("TIME-ATMOS_R0", f"{n}D", f"(1,{n})", t)]))
    if spec.datamedn_ext:
        med = np.zeros((1, n_scan, 1, n_wave, 1, 1))
        med[0, :, 0, :, 0, 0] = (np.arange(n_wave) + 1.0)[None, :] * (1 + np.arange(n_scan))[:, None]
        hdus.append(_table("VAR-EXT-DATAMEDN", [("DATAMEDN", f"{med[0].size}E",
                                                 f"(1,1,{n_wave},1,{n_scan})", med)]))
    return hdus


def cube_filename(spec: CubeSpec, *, with_scans: bool = True, suffix: str = "") -> str:
    from flows.fits.oid import collapse_ranges

    middle = f"_scans={collapse_ranges(spec.scans)}" if with_scans else ""
    return f"nb_{spec.filter1}_{spec.date_beg[:19]}{middle}_stokes_corrected_im{suffix}.fits"


def write_cube(directory: Path, spec: CubeSpec | None = None, *, filename: str | None = None,
               with_scans_in_name: bool = True) -> Path:
    from astropy.io import fits

    spec = spec or CubeSpec()
    data = cube_data(spec)
    primary = fits.PrimaryHDU(data=data, header=primary_header(spec))
    path = Path(directory) / (filename or cube_filename(spec, with_scans=with_scans_in_name))
    fits.HDUList([primary, *extension_hdus(spec)]).writeto(path, checksum=spec.checksum, overwrite=True)
    return path


def write_sparse_cube(path: Path, shape_xyz: tuple[int, int, int, int, int], *, instrument: str = "CRISP") -> Path:
    """A huge 5-D float32 cube whose data unit is a hole: headers are real, the data is never written."""
    from astropy.io import fits

    nx, ny, nw, ns, nt = shape_xyz
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 5
    for i, n in enumerate(shape_xyz, start=1):
        header[f"NAXIS{i}"] = n
    header["EXTEND"] = True
    spec = CubeSpec(instrument=instrument)
    for card in primary_header(spec).cards:
        header.append(card)
    block = header.tostring().encode("ascii")
    size = len(block) + nx * ny * nw * ns * nt * 4
    size += (-size) % 2880
    with open(path, "wb") as fh:
        fh.write(block)
        fh.truncate(size)
    os.utime(path)
    return path


def ffmpeg_bindir(tmp_path: Path) -> Path | None:
    """A directory holding an ``ffmpeg`` to put on PATH: the system's, else imageio-ffmpeg's static build."""
    import shutil

    exe = shutil.which("ffmpeg")
    if exe is None:
        try:
            import imageio_ffmpeg
        except ImportError:
            return None
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "ffmpeg").exists():
        (bindir / "ffmpeg").symlink_to(exe)
    return bindir


def write_mov(path: Path, seconds: int = 1) -> Path:
    """A small MPEG-4 movie, as the SST pipeline leaves beside a cube."""
    import subprocess

    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size=64x48:rate=5:duration={seconds}", "-c:v", "mpeg4", str(path)], check=True)
    return path

