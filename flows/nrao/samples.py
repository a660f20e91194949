"""Synthetic CASA run directories, shaped like real ones, for tests, the demo and benchmarks.

Every byte is deterministic (no clock, no randomness) so manifests built from these
trees can be compared with golden files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

SAMPLE_EB = "TSKY0001.sb41234567.eb41234568.59400.5"
CAL_SOURCE = "cal-run-41234568"
IMAGE_SOURCE = "img-run-77"
SECI_SOURCE = "seci-run-2048"
SECI_IMAGE_PREFIX = "VLASS2.1.se.T10t01.J123456+123456.06.2048.v1.I.iter1"
IMAGE_PREFIX = "oussid.J1234+5678_sci"
WEBLOG_OLD = "pipeline-20210804T101010.123"
WEBLOG_NEW = "pipeline-20210805T154602.456"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _pattern(n: int, seed: int) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    x = seed & 0xFFFFFFFF or 1
    while len(out) < n:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    return bytes(out[:n])


def write_fits_image(path: Path, *, ra: float = 188.7, dec: float = 12.6, nx: int = 16, ny: int = 16,
                     nchan: int = 1, freq_hz: float = 3.0e9, chan_width_hz: float = 2.0e9,
                     project: str = "TSKY0001", seed: int = 1) -> Path:
    """A small 4-D CASA-style image (RA, Dec, Stokes, Freq) with a full header."""
    import numpy as np
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    data = rng.standard_normal((nchan, 1, ny, nx)).astype("float32")
    hdu = fits.PrimaryHDU(data)
    h = hdu.header
    h["BUNIT"] = "Jy/beam"
    h["BMAJ"], h["BMIN"], h["BPA"] = 2.5 / 3600, 1.5 / 3600, 35.0
    for i, (ctype, crval, cdelt, crpix, cunit) in enumerate([
        ("RA---SIN", ra, -0.5 / 3600, nx / 2 + 1, "deg"),
        ("DEC--SIN", dec, 0.5 / 3600, ny / 2 + 1, "deg"),
        ("STOKES", 1.0, 1.0, 1.0, ""),
        ("FREQ", freq_hz, chan_width_hz, 1.0, "Hz"),
    ], start=1):
        for key, value in (("CTYPE", ctype), ("CRVAL", crval), ("CDELT", cdelt), ("CRPIX", crpix), ("CUNIT", cunit)):
            h[f"{key}{i}"] = value
    h["RADESYS"] = "FK5"
    h["EQUINOX"] = 2000.0
    h["SPECSYS"] = "LSRK"
    h["TELESCOP"] = "EVLA"
    h["OBJECT"] = "J1234+5678"
    h["PROJECT"] = project
    h["DATE-OBS"] = "2021-08-04T10:00:00.000"
    h["DATE-END"] = "2021-08-04T11:30:00.000"
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu.writeto(path, overwrite=True)
    return path


def _weblogs(run: Path, where: str = "working") -> None:
    for name, title in ((WEBLOG_OLD, "first attempt"), (WEBLOG_NEW, "rerun")):
        _write(run / where / name / "html" / "index.html", f"<html><body>weblog {title}</body></html>\n")
        _write(run / where / name / "html" / "t1-1.html", f"<html><body>task 1 ({title})</body></html>\n")


def _pipeline_scripts(run: Path) -> None:
    _write(run / "products" / "casa_pipescript.py", "context = h_init()\nhifv_importdata(vis=['x'])\nh_save()\n")
    _write(run / "products" / "uid___A001_X1_X2.pprequest.xml", "<SciPipeRequest><ProjectSummary/></SciPipeRequest>\n")
    _write(run / "working" / "casa_commands.log", "# casa commands\nimportasdm(asdm='x')\n")
    _write(run / "products" / "pipeline_manifest.xml", "<piperesults name='x'/>\n")


def make_calibration_run(root: str | Path, name: str = CAL_SOURCE) -> str:
    """``<root>/<name>`` with products/ (cal tables + scripts + an old weblog.tgz) and two weblogs."""
    run = Path(root) / name
    products = run / "products"
    _write(products / "unknown.session_1.caltables.tgz", _pattern(48_000, 11))
    _write(products / f"{SAMPLE_EB}.ms.flagversions.tgz", _pattern(20_000, 12))
    _write(products / f"{SAMPLE_EB}.ms.calapply.txt", "applycal(vis='x', gaintable=['a.tbl'])\n")
    _write(products / "unknown.session_1.flagtemplate.txt", "mode='manual' antenna='ea01'\n")
    _write(products / "weblog.tgz", _pattern(5_000, 13))  # stale pre-made weblog: must not go in the cal tar
    _pipeline_scripts(run)
    _weblogs(run)
    return name


def make_image_run(root: str | Path, name: str = IMAGE_SOURCE, *, with_aux: bool = True) -> str:
    run = Path(root) / name
    products = run / "products"
    cont = f"{IMAGE_PREFIX}.X_band.cont.I"
    cube = f"{IMAGE_PREFIX}.spw2.cube.I"
    write_fits_image(products / f"{cont}.pbcor.tt0.fits", seed=1)
    write_fits_image(products / f"{cont}.pb.tt0.fits", seed=2)
    write_fits_image(products / f"{cont}.alpha.fits", seed=3)
    write_fits_image(products / f"{cont}.alpha.error.fits", seed=4)
    write_fits_image(products / f"{cont}.mask.fits", seed=5)
    _write(products / f"{cont}.pbcor.tt0.png", _pattern(3_000, 21))
    write_fits_image(products / f"{cube}.pbcor.fits", nchan=4, freq_hz=8.1e9, chan_width_hz=1.0e6, seed=6)
    write_fits_image(products / f"{cube}.pb.fits", nchan=4, freq_hz=8.1e9, chan_width_hz=1.0e6, seed=7)
    _write(products / "README.txt", "not a product\n")
    _pipeline_scripts(run)
    _weblogs(run)
    if with_aux:
        _write(run / "aux_image_metadata.json", json.dumps({
            "projectCode": "TSKY0001", "collectionName": "SRDP", "calProductLocator": "uid://evla/calibration/c0ffee",
            "productType": "image"}, indent=2, sort_keys=True) + "\n")
    return name


def make_seci_run(root: str | Path, name: str = SECI_SOURCE, *, with_aux: bool = True) -> str:
    run = Path(root) / name
    products = run / "products"
    write_fits_image(products / f"{SECI_IMAGE_PREFIX}.image.pbcor.tt0.subim.fits", nx=32, ny=32, seed=31)
    write_fits_image(products / f"{SECI_IMAGE_PREFIX}.image.pbcor.tt0.rms.subim.fits", nx=32, ny=32, seed=32)
    write_fits_image(products / f"{SECI_IMAGE_PREFIX}.pb.tt0.subim.fits", nx=32, ny=32, seed=33)
    _pipeline_scripts(run)
    _weblogs(run)
    if with_aux:
        _write(run / "products" / "aux_image_metadata.json", json.dumps({
            "projectCode": "VLASS2.1", "collectionName": "VLASS", "tileName": "T10t01",
            "productType": "se_continuum"}, indent=2, sort_keys=True) + "\n")
    return name


def make_observation(root: str | Path, name: str = SAMPLE_EB, *, bdf_count: int = 3, bdf_size: int = 40_000) -> str:
    """An SDM directory: ASDM.xml and tables, BDFs under ASDMBinary/."""
    sdm = Path(root) / name
    _write(sdm / "ASDM.xml", f"<ASDM><Entity entityId='uid://evla/sdm/{name}'/></ASDM>\n")
    for table in ("Main", "Antenna", "SpectralWindow", "Scan", "Source"):
        _write(sdm / f"{table}.xml", f"<{table}Table/>\n")
    _write(sdm / "SysPower.bin", _pattern(9_000, 41))
    for i in range(bdf_count):
        _write(sdm / "ASDMBinary" / f"uid____evla_bdf_16000000000{i:02d}", _pattern(bdf_size, 50 + i))
    return name


def make_sample_file(path: str | Path, size: int, block: int = 8 << 20) -> Path:
    """A large file of pseudo-random bytes without holding it in memory (benchmarks).

    It is fsynced, so a timing that follows does not share the disk with its writeback.
    """
    path = Path(path)
    chunk = os.urandom(block)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(block, left)
            fh.write(chunk[:n])
            left -= n
        fh.flush()
        os.fsync(fh.fileno())
    return path
