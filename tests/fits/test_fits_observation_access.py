"""Instrument, observation key and grouping, release embargo and access grants."""
from __future__ import annotations

import datetime as dt

import pytest
from astropy.io import fits
from cubes import CubeSpec, write_cube

from flows.fits.access import (
    NO_RELEASE_COMMENT,
    SWEDISH_USER_GROUP,
    Grant,
    access_grants,
    has_access,
    release_info,
)
from flows.fits.header import read_headers
from flows.fits.observation import GroupingTag, grouping_tag, instrument_name, observation
from tasks.errors import UserError


@pytest.mark.parametrize("raw, name", [("CRISP", "CRISP"), ("crisp   ", "CRISP"), ("Chromis", "CHROMIS")])
def test_known_instruments(raw, name):
    assert instrument_name(fits.Header({"INSTRUME": raw})) == name


def test_unknown_or_missing_instrument_is_a_user_error():
    with pytest.raises(UserError, match="unknown instrument INSTRUME='HMI'"):
        instrument_name(fits.Header({"INSTRUME": "HMI"}))
    with pytest.raises(UserError, match="no INSTRUME"):
        instrument_name(fits.Header())


def test_observation_key_and_grouping():
    assert observation(fits.Header({"POINT_ID": "2019-04-16T08:19:53", "DATE-BEG": "x"})).key == "2019-04-16T08:19:53"
    old = observation(fits.Header({"DATE-BEG": "2016-09-19T09:28:36.5"}))
    assert (old.key, old.grouping) == ("2016-09-19T09:28:36.5", GroupingTag.NONE)
    assert observation(fits.Header({"POINT_ID": "2019-04-16T08:19:53_mosaic"})).grouping is GroupingTag.MOSAIC
    assert grouping_tag("2019-04-16T08:19:53", "nb_6173_2019-04-16_scans=0-4_im_grouped.fits") is GroupingTag.GROUPED
    assert grouping_tag(None, "nb_6173_mosaic_of_things_im.fits") is GroupingTag.NONE
    with pytest.raises(UserError, match="neither POINT_ID nor DATE-BEG"):
        observation(fits.Header({"FILTER1": "6173"}))


def test_release_from_a_real_cube_joins_continue_cards(tmp_path):
    spec = CubeSpec()
    path = write_cube(tmp_path, spec)
    raw = path.read_bytes()
    assert b"CONTINUE" in raw            # the long comment really was split over cards
    release = release_info(read_headers(path).primary)
    assert release.date == dt.date(2020, 11, 12)
    assert release.comment == spec.release_comment
    assert release.provided


def test_missing_release_embargoes_indefinitely_and_bad_release_is_rejected():
    none = release_info(fits.Header())
    assert (none.date, none.comment, none.provided) == (dt.date.max, NO_RELEASE_COMMENT, False)
    with pytest.raises(UserError, match="YYYY-MM-DD"):
        release_info(fits.Header({"RELEASE": "12/11/2020"}))


def test_has_access_before_and_after_release():
    release = dt.date(2030, 1, 1)
    grants = access_grants(["Owner@Example.org", "owner@example.org", "second@example.org"], swedish_data=True)
    assert grants == [Grant("user", "Owner@Example.org"), Grant("user", "second@example.org"),
                      Grant("group", SWEDISH_USER_GROUP)]
    before = dt.date(2029, 12, 31)
    assert has_access(release, grants, "owner@example.org", [], before)          # e-mail match ignores case
    assert has_access(release, grants, "someone@else.org", [SWEDISH_USER_GROUP], before)
    assert not has_access(release, grants, "someone@else.org", ["Other group"], before)
    assert not has_access(release, grants, None, [], before)
    assert not has_access(release, [], "owner@example.org", [SWEDISH_USER_GROUP], before)
    assert has_access(release, [], None, [], release)                            # on the release date: everyone
    assert has_access(release, [], "anyone@x.org", [], dt.date(2031, 5, 5))
    assert not has_access(dt.date.max, grants[1:2], "owner@example.org", [], dt.date(2999, 1, 1))


def test_grants_reject_non_addresses():
    with pytest.raises(UserError, match="not an e-mail address"):
        access_grants(["not an address"])
    assert access_grants([], swedish_data=False) == []
