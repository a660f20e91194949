"""Image metadata for the archive, read from the FITS header only (the data is never loaded).

What is extracted follows the NRAO image-ingestion requirements (ObsCore-like):
position of the image centre, size in pixels, beam (and the derived resolution
and axial ratio), start/end time, frequency range and channel width, project
and polarization products.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks.errors import UserError

STOKES = {1: "I", 2: "Q", 3: "U", 4: "V", -1: "RR", -2: "LL", -3: "RL", -4: "LR",
          -5: "XX", -6: "YY", -7: "XY", -8: "YX"}


@dataclass(frozen=True)
class ImageMetadata:
    filename: str
    ra_deg: float | None
    dec_deg: float | None
    naxis1: int
    naxis2: int
    bmaj_deg: float | None
    bmin_deg: float | None
    bpa_deg: float | None
    resolution_arcsec: float | None   # sqrt(BMAJ * BMIN)
    beam_axial_ratio: float | None    # BMAJ / BMIN
    date_obs: str | None
    date_end: str | None
    freq_min_hz: float | None
    freq_max_hz: float | None
    channel_width_hz: float | None
    n_channels: int | None
    project: str | None
    polarizations: tuple[str, ...]
    telescope: str | None
    object: str | None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["polarizations"] = list(self.polarizations)
        return doc


def read_header(path: str | Path):
    """The primary header, or the first image extension's header if the primary holds no image."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = fits.getheader(path, 0)
            if int(header.get("NAXIS", 0)) < 2:
                with fits.open(path, lazy_load_hdus=True, memmap=True) as hdul:
                    for hdu in hdul[1:]:
                        if hdu.is_image and int(hdu.header.get("NAXIS", 0)) >= 2:
                            return hdu.header.copy()
    except OSError as exc:
        raise UserError(f"{Path(path).name} is not a readable FITS file: {exc}") from exc
    if int(header.get("NAXIS", 0)) < 2:
        raise UserError(f"{Path(path).name} has no 2-D image")
    return header


def image_metadata(path: str | Path) -> ImageMetadata:
    header = read_header(path)
    return metadata_from_header(header, Path(path).name)


def metadata_from_header(header, filename: str = "") -> ImageMetadata:
    naxis = int(header.get("NAXIS", 0))
    axes = {str(header.get(f"CTYPE{i}", "")).upper(): i for i in range(1, naxis + 1)}
    ra, dec = _centre(header)
    bmaj, bmin, bpa = (_float(header.get(k)) for k in ("BMAJ", "BMIN", "BPA"))
    resolution = math.sqrt(bmaj * bmin) * 3600.0 if bmaj and bmin else None
    ratio = bmaj / bmin if bmaj and bmin else None
    fmin, fmax, width, nchan = _spectral(header, axes)
    return ImageMetadata(
        filename=filename, ra_deg=ra, dec_deg=dec, naxis1=int(header.get("NAXIS1", 0)),
        naxis2=int(header.get("NAXIS2", 0)), bmaj_deg=bmaj, bmin_deg=bmin, bpa_deg=bpa,
        resolution_arcsec=resolution, beam_axial_ratio=ratio, date_obs=_str(header.get("DATE-OBS")),
        date_end=_str(header.get("DATE-END")), freq_min_hz=fmin, freq_max_hz=fmax, channel_width_hz=width,
        n_channels=nchan, project=_str(header.get("PROJECT") or header.get("PROPCODE")),
        polarizations=_stokes(header, axes), telescope=_str(header.get("TELESCOP")), object=_str(header.get("OBJECT")))


def _centre(header) -> tuple[float | None, float | None]:
    """World position of the central pixel, through the celestial WCS (projection included)."""
    from astropy.wcs import WCS, FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
        if not wcs.has_celestial:
            return None, None
        x = (int(header["NAXIS1"]) + 1) / 2.0
        y = (int(header["NAXIS2"]) + 1) / 2.0
        ra, dec = wcs.celestial.all_pix2world([[x, y]], 1)[0]
        return float(ra) % 360.0, float(dec)
    except Exception:  # noqa: BLE001 - a header without usable WCS has no position, not a crash
        return None, None


def _spectral(header, axes: dict[str, int]) -> tuple[float | None, float | None, float | None, int | None]:
    """Frequency edges of the band (channel centres ± half a channel) and the channel width."""
    idx = next((i for name, i in axes.items() if name.startswith("FREQ")), None)
    if idx is None:
        return None, None, None, None
    crval, cdelt = _float(header.get(f"CRVAL{idx}")), _float(header.get(f"CDELT{idx}"))
    crpix = _float(header.get(f"CRPIX{idx}")) or 1.0
    n = int(header.get(f"NAXIS{idx}", 1))
    if crval is None:
        return None, None, None, n
    width = abs(cdelt) if cdelt else None
    half = (width or 0.0) / 2.0
    first = crval + (1 - crpix) * (cdelt or 0.0)
    last = crval + (n - crpix) * (cdelt or 0.0)
    return min(first, last) - half, max(first, last) + half, width, n


def _stokes(header, axes: dict[str, int]) -> tuple[str, ...]:
    idx = axes.get("STOKES")
    if idx is None:
        return ()
    crval, cdelt = _float(header.get(f"CRVAL{idx}")), _float(header.get(f"CDELT{idx}")) or 1.0
    crpix = _float(header.get(f"CRPIX{idx}")) or 1.0
    out = []
    for p in range(1, int(header.get(f"NAXIS{idx}", 1)) + 1):
        code = int(round(crval + (p - crpix) * cdelt)) if crval is not None else 0
        out.append(STOKES.get(code, str(code)))
    return tuple(out)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None
