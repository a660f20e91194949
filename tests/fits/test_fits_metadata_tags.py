"""Typed metadata columns from header keywords, and FEATURES/EVENTS tags from the vocabulary."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from astropy.io import fits
from cubes import CubeSpec, write_cube

from flows.fits.header import read_headers
from flows.fits.metadata import KEYWORDS_FILE, column_name, extract_metadata, known_keywords, parse_datetime
from flows.fits.tags import Vocabulary, extract_tags, load_vocabulary
from tasks.errors import UserError

BRIEF_KEYWORDS = ["DATE-BEG", "DATE-END", "DATE-AVG", "TELESCOP", "INSTRUME", "FILTER1", "POINT_ID", "WAVELNTH",
                  "WAVEMIN", "WAVEMAX", "XPOSURE", "TEXPOSUR", "NSUMEXP", "CADENCE", "OBS_HDU", "RELEASE",
                  "RELEASEC", "FEATURES", "EVENTS", "OBSERVER", "OBJECT", "OBS_MODE", "NAXIS1", "NAXIS2", "NAXIS3",
                  "NAXIS4", "NAXIS5", "BTYPE", "BUNIT", "CDELT1", "CDELT2", "CDELT3", "CRVAL1", "CRVAL2", "CRVAL3",
                  "HGLN_OBS", "HPLN_OBS"]


@pytest.mark.parametrize("keyword, column", [("DATE-BEG", "date_beg"), ("DW3.AXIS.1", "dw3_axis_1"),
                                             ("DW3 AXIS1", "dw3_axis1"), ("OBSGEO-X", "obsgeo_x"),
                                             ("HGLN-OBS", "hgln_obs"), ("NAXIS3", "naxis3")])
def test_column_names(keyword, column):
    assert column_name(keyword) == column


def test_keyword_file_covers_the_svo_keywords_with_unique_columns():
    table = known_keywords()
    doc = json.loads(KEYWORDS_FILE.read_text())
    assert len(table) == len(doc["keywords"]) > 300
    for keyword in BRIEF_KEYWORDS:
        assert column_name(keyword) in table, keyword
    assert table["date_beg"].type == "datetime" and table["naxis1"].type == "integer"
    assert table["wavelnth"].type == "real" and table["filter1"].type == "text"


def test_metadata_of_a_synthetic_cube(cube):
    header = read_headers(cube).primary
    meta = extract_metadata(header)
    c = meta.columns
    assert c["date_beg"] == dt.datetime(2019, 4, 16, 8, 20, 18, 967580)
    assert c["dateref"] == "2019-04-16T00:00:00.000000"            # text in the SVO keyword list
    assert c["filter1"] == "6173" and c["instrume"] == "CRISP" and c["point_id"] == "2019-04-16T08:19:53"
    assert c["wavelnth"] == 617.3 and isinstance(c["obs_hdu"], int)
    assert (c["naxis"], c["naxis1"], c["naxis2"], c["naxis3"], c["naxis4"], c["naxis5"]) == (5, 16, 12, 5, 4, 6)
    assert c["cdelt1"] == 1.0 and isinstance(c["cdelt1"], float)
    assert c["dw3_axis1"] == 1 and c["dw3_axis_1"] == 1.0 and c["dw3_name"] == "Cavity error"
    assert c["releasec"].endswith("any publication that uses these data")
    assert meta.unknown == ["SOMEKEY"]                                  # reported, not dropped
    assert "SOMEKEY = 'not an SVO keyword'" in meta.header_text
    assert meta.header_text == header.tostring(sep="\n")
    assert "CHECKSUM" not in meta.unknown and "COMMENT" not in meta.unknown


def test_typing_rules():
    header = fits.Header()
    header["DATE-OBS"] = "2019-04-18"                 # a bare date is allowed by FITS
    header["DATE-END"] = "2019-04-18T10:39:08.566671234"   # more than microsecond precision
    header["OBS_HDU"] = 1.0                          # integral float into an integer column
    header["FILTER1"] = 6302                         # numeric value into a text column
    header["WAVEMIN"] = 617
    header["OBJECT"] = ""
    header["XPOSURE"] = ""                           # empty string for a real means no value
    meta = extract_metadata(header)
    assert meta.columns == {"date_obs": dt.datetime(2019, 4, 18),
                            "date_end": dt.datetime(2019, 4, 18, 10, 39, 8, 566671),
                            "obs_hdu": 1, "filter1": "6302", "wavemin": 617.0, "object": "", "xposure": None}


@pytest.mark.parametrize("key, value, words", [("DATE-BEG", "22/09/94", "date-time"),
                                               ("NAXIS1", 2.5, "integer"),
                                               ("WAVELNTH", "six hundred", "real number")])
def test_values_that_do_not_fit_their_type_are_user_errors(key, value, words):
    header = fits.Header()
    header[key] = value
    with pytest.raises(UserError, match=f"keyword {key} = .* is not a valid {words}"):
        extract_metadata(header)


def test_parse_datetime_formats():
    assert parse_datetime("2019-04-16T08:20:18") == dt.datetime(2019, 4, 16, 8, 20, 18)
    assert parse_datetime("2019-04-16T08:20:18.96758") == dt.datetime(2019, 4, 16, 8, 20, 18, 967580)
    # common practice: a space for the T, a trailing Z
    assert parse_datetime("2019-04-16 08:20:18") == dt.datetime(2019, 4, 16, 8, 20, 18)
    assert parse_datetime("2019-04-16  08:20:18.5Z") == dt.datetime(2019, 4, 16, 8, 20, 18, 500000)
    for bad in ("2019-04-16X08:20:18", "16/04/97", "yesterday"):
        with pytest.raises(ValueError):
            parse_datetime(bad)


def test_date_obs_with_a_space_and_a_wave_unit_by_name():
    from astropy.io import fits

    header = fits.Header([("DATE-OBS", "2019-04-16 08:20:18.25"), ("WAVEUNIT", "angstrom")])
    columns = extract_metadata(header).columns
    assert columns["date_obs"] == dt.datetime(2019, 4, 16, 8, 20, 18, 250000) and columns["waveunit"] == -10
    for text, exponent in (("nm", -9), ("Angstroms", -10), ("-10", -10), ("um", -6)):
        assert extract_metadata(fits.Header([("WAVEUNIT", text)])).columns["waveunit"] == exponent
    assert extract_metadata(fits.Header([("WAVEUNIT", -9)])).columns["waveunit"] == -9
    with pytest.raises(UserError, match="WAVEUNIT = 'furlong'"):
        extract_metadata(fits.Header([("WAVEUNIT", "furlong")]))


def test_tags_from_a_cube_use_the_vocabulary_spelling(cube):
    tags = extract_tags(read_headers(cube).primary)
    assert tags.features == ["Sunspot", "Polar Region"]
    assert tags.events == ["Flare"]
    assert tags.features_ingested and tags.events_ingested and tags.unmatched == []


def test_tags_matching_aliases_duplicates_and_unknown_terms():
    header = fits.Header({"FEATURES": " quiet SUN , Filament,Prominence, pores, wormhole,,Quiet Sun",
                          "EVENTS": "flares"})
    tags = extract_tags(header)
    assert tags.features == ["Quiet Sun", "Filament/Prominence", "Pore"]
    assert tags.events == ["Flare"]
    assert tags.unmatched == ["wormhole"]


@pytest.mark.parametrize("header", [fits.Header(), fits.Header({"FEATURES": "MISSING", "EVENTS": "missing"})])
def test_missing_features_mean_no_tags_and_not_ingested(header):
    tags = extract_tags(header)
    assert (tags.features, tags.events, tags.features_ingested, tags.events_ingested) == ([], [], False, False)


def test_empty_features_are_ingested_but_empty():
    tags = extract_tags(fits.Header({"FEATURES": "", "EVENTS": "Flare"}))
    assert tags.features == [] and tags.features_ingested and tags.events == ["Flare"]


def test_vocabulary_file_and_custom_vocabulary():
    vocab = load_vocabulary()
    assert "Active Region" in vocab.features and "Polar Region" in vocab.features and vocab.events == ("Flare",)
    assert all(target in vocab.features + vocab.events for target in vocab.aliases.values())
    custom = Vocabulary(features=("Coronal Hole",), events=("CME",))
    tags = extract_tags(fits.Header({"FEATURES": "coronal hole,Sunspot", "EVENTS": "cme"}), custom)
    assert (tags.features, tags.events, tags.unmatched) == (["Coronal Hole"], ["CME"], ["Sunspot"])


def test_chromis_cube_without_stokes(tmp_path):
    path = write_cube(tmp_path, CubeSpec(instrument="CHROMIS", n_stokes=1, filter1="3950", features="MISSING"))
    header = read_headers(path).primary
    meta = extract_metadata(header)
    assert meta.columns["instrume"] == "CHROMIS" and meta.columns["naxis4"] == 1
    assert extract_tags(header).features_ingested is False
