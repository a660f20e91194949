"""r0 series and spectral line profile from the small SOLARNET extension tables."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from cubes import CubeSpec, write_cube

from flows.fits.extensions import open_cube, r0_series, read_extension_data, spectral_line_profile
from tasks.errors import UserError


def test_extension_data_of_a_full_cube(cube):
    data = read_extension_data(cube)
    assert data.scan_numbers == [0, 1, 2, 3, 5, 6]
    json.dumps(data.r0)
    json.dumps(data.line_profile)            # both must be storable as JSON as they are


def test_r0_series_values_and_times(cube):
    r0 = read_extension_data(cube).r0
    assert r0["version"] == 4
    low, high = r0["data"]["r0_low"], r0["data"]["r0_low_high"]
    n = 2 * 6
    assert len(low) == len(high) == n
    ref = dt.datetime(2019, 4, 16, tzinfo=dt.timezone.utc)
    expected_first = round((ref + dt.timedelta(seconds=30018.9)).timestamp() * 1000)
    assert low[0][0] == high[0][0] == expected_first
    assert low[1][0] - low[0][0] == 10_000
    assert low[0][1] == pytest.approx(0.05) and low[-1][1] == pytest.approx(0.10)
    assert high[0][1] == pytest.approx(0.07) and high[-1][1] == pytest.approx(0.12)


def test_line_profile_from_wcs_tab(cube):
    profile = read_extension_data(cube).line_profile
    assert profile["version"] == 3
    waves = profile["data"]["wavelengths"]
    assert waves == pytest.approx(617.293 + 0.0035 * (np.arange(5) - 2))
    # per scan s (1-based factor) the median at wavelength w is (w+1)*s; the mean over 6 scans is (w+1)*3.5
    assert profile["data"]["amplitude_values"] == pytest.approx([(w + 1) * 3.5 for w in range(5)])


def test_line_profile_with_a_linear_wavelength_axis(tmp_path):
    path = write_cube(tmp_path, CubeSpec(wcs_tab=False, scans=[4]))
    profile = read_extension_data(path).line_profile
    assert profile["data"]["wavelengths"] == pytest.approx([617.293 + 0.0035 * i for i in range(5)])
    assert profile["data"]["amplitude_values"] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])


def test_absent_extensions_are_none(tmp_path):
    path = write_cube(tmp_path, CubeSpec(scannum_ext=False, r0_ext=False, datamedn_ext=False, wcs_tab=False))
    data = read_extension_data(path)
    assert (data.scan_numbers, data.r0, data.line_profile) == (None, None, None)


def test_oversized_or_malformed_tables_are_user_errors(cube, tmp_path):
    with open_cube(cube) as hdul:
        with pytest.raises(UserError, match="above the 100-byte limit"):
            r0_series(hdul, max_bytes=100)
    path = write_cube(tmp_path, CubeSpec(extra={"DATEREF": ""}))
    with open_cube(path) as hdul:
        with pytest.raises(UserError, match="DATEREF"):
            r0_series(hdul)
        assert spectral_line_profile(hdul) is not None
