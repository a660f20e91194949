"""Image metadata from FITS headers (header only)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from flows.nrao.fits_metadata import image_metadata
from flows.nrao.samples import write_fits_image
from tasks.errors import UserError


def test_continuum_image(tmp_path: Path) -> None:
    path = write_fits_image(tmp_path / "c.fits", ra=188.7, dec=12.6, nx=17, ny=17,
                            freq_hz=3.0e9, chan_width_hz=2.0e9, project="TSKY0001")
    md = image_metadata(path)
    # 17 pixels with CRPIX 9.5: the centre pixel (9) is half a pixel (0.25") east and south of the
    # reference pixel (CDELT1 < 0, CDELT2 > 0)
    assert md.dec_deg == pytest.approx(12.6 - 0.25 / 3600, abs=1e-7)
    assert md.ra_deg == pytest.approx(188.7 + 0.25 / 3600 / math.cos(math.radians(12.6)), abs=1e-7)
    assert (md.naxis1, md.naxis2) == (17, 17)
    assert (md.bmaj_deg, md.bmin_deg, md.bpa_deg) == pytest.approx((2.5 / 3600, 1.5 / 3600, 35.0))
    assert md.resolution_arcsec == pytest.approx(math.sqrt(2.5 * 1.5))
    assert md.beam_axial_ratio == pytest.approx(2.5 / 1.5)
    assert (md.freq_min_hz, md.freq_max_hz) == pytest.approx((2.0e9, 4.0e9))
    assert md.channel_width_hz == pytest.approx(2.0e9) and md.n_channels == 1
    assert (md.date_obs, md.date_end) == ("2021-08-04T10:00:00.000", "2021-08-04T11:30:00.000")
    assert md.project == "TSKY0001" and md.polarizations == ("I",) and md.telescope == "EVLA"
    assert md.to_json()["polarizations"] == ["I"]


def test_cube_frequency_range_and_channel_width(tmp_path: Path) -> None:
    path = write_fits_image(tmp_path / "cube.fits", nchan=4, freq_hz=8.1e9, chan_width_hz=1.0e6)
    md = image_metadata(path)
    assert md.n_channels == 4 and md.channel_width_hz == pytest.approx(1.0e6)
    # channel centres 8.100..8.103 GHz, edges half a channel further out
    assert md.freq_min_hz == pytest.approx(8.1e9 - 0.5e6)
    assert md.freq_max_hz == pytest.approx(8.1e9 + 3.5e6)


def test_header_only_is_read(tmp_path: Path) -> None:
    """A file truncated after its header still yields metadata: the data is never touched."""
    path = write_fits_image(tmp_path / "big.fits", nx=256, ny=256)
    data = path.read_bytes()
    (tmp_path / "trunc.fits").write_bytes(data[:2880 * 2])
    assert image_metadata(tmp_path / "trunc.fits").naxis1 == 256


def test_not_fits_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "x.fits").write_bytes(b"this is not FITS" * 200)
    with pytest.raises(UserError, match="x.fits"):
        image_metadata(tmp_path / "x.fits")
