"""Observation IDs in the SSTRED format, and the scan-list range compression behind them."""
from __future__ import annotations

import pytest
from astropy.io import fits
from cubes import CubeSpec, write_cube

from flows.fits.extensions import open_cube, scan_numbers
from flows.fits.header import read_headers
from flows.fits.oid import collapse_ranges, expand_ranges, observation_id, scans_from_filename
from tasks.errors import UserError


@pytest.mark.parametrize("numbers, text", [
    ([5], "5"),
    ([3, 4], "3,4"),                              # two in a row stay a list, as red_collapserange writes them
    ([0, 1, 2], "0-2"),
    (list(range(37)) + [38, 39], "0-36,38,39"),   # the SST archive's own example
    ([1, 2, 3, 4, 5, 8, 9, 10, 14, 17, 20, 21, 22], "1-5,8-10,14,17,20-22"),
    ([9, 1, 3, 2, 2, 1], "1-3,9"),                # unsorted and repeated input
])
def test_collapse_ranges(numbers, text):
    assert collapse_ranges(numbers) == text
    assert expand_ranges(text) == sorted(set(numbers))


def test_collapse_rejects_empty_and_expand_rejects_garbage():
    with pytest.raises(UserError, match="empty"):
        collapse_ranges([])
    for bad in ("", "1-", "a,b", "3-1", "1;2"):
        with pytest.raises(UserError):
            expand_ranges(bad)


def test_scans_from_filename():
    assert scans_from_filename("nb_6173_2019-04-16T08:20:18_scans=0-36,38,39_stokes_corrected_im.fits") == "0-36,38,39"
    assert scans_from_filename("wb_3950_2016-09-19T09:28:36_scans=12_im.fits") == "12"
    assert scans_from_filename("nb_6173_2019-04-16T08:20:18_scans=0-4.fits") == "0-4"
    assert scans_from_filename("nb_6173_2019-04-16T08:20:18_im.fits") is None
    with pytest.raises(UserError):
        scans_from_filename("nb_6173_scans=zero_im.fits")


def test_oid_prefers_filename_then_extension_then_scannum(tmp_path):
    spec = CubeSpec(scans=list(range(37)) + [38, 39])
    path = write_cube(tmp_path, spec)
    primary = read_headers(path).primary
    with open_cube(path) as hdul:
        from_table = scan_numbers(hdul)
    assert from_table == spec.scans

    expected = "2019-04-16T08:20:18.96758_6173_0-36,38,39"
    assert observation_id(primary, filename=path.name, scan_numbers=[99]) == expected   # the name wins
    assert observation_id(primary, filename="cube_without_scans.fits", scan_numbers=from_table) == expected
    assert observation_id(primary, filename="x.fits") == "2019-04-16T08:20:18.96758_6173_0"  # SCANNUM keyword


def test_given_oid_wins_and_is_checked():
    header = fits.Header({"DATE-BEG": "2020-01-01T00:00:00", "FILTER1": "3950"})
    assert observation_id(header, filename="a_scans=1-3_b.fits", oid="my-own-oid") == "my-own-oid"
    with pytest.raises(UserError, match="invalid observation id"):
        observation_id(header, oid="has/slash")


def test_oid_strips_padding_and_needs_date_and_filter():
    header = fits.Header({"DATE-BEG": " 2020-01-01T00:00:00.5 ", "FILTER1": "3950    ", "SCANNUM": 7})
    assert observation_id(header) == "2020-01-01T00:00:00.5_3950_7"
    with pytest.raises(UserError, match="DATE-BEG"):
        observation_id(fits.Header({"FILTER1": "3950", "SCANNUM": 1}))
    with pytest.raises(UserError, match="FILTER1"):
        observation_id(fits.Header({"DATE-BEG": "2020-01-01T00:00:00", "SCANNUM": 1}))
    with pytest.raises(UserError, match="no '_scans='"):
        observation_id(fits.Header({"DATE-BEG": "2020-01-01T00:00:00", "FILTER1": "3950"}), filename="x.fits")


def test_scans_and_date_beg_from_files_in_the_wild():
    from astropy.io import fits

    from flows.fits.oid import observation_id, scans_from_filename

    for name in ("a_scans=0-3.fits.gz", "a_scans=0-3.fts", "a_scans=0-3.fits.fz", "a_scans=0-3.FIT"):
        assert scans_from_filename(name) == "0-3", name
    header = fits.Header([("DATE-BEG", "2019-04-16 08:20:18.5"), ("FILTER1", "6173")])
    assert observation_id(header, filename="x_scans=1,2.fits.gz") == "2019-04-16T08:20:18.5_6173_1,2"
