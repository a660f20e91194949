"""Bag names: clean name, multipart suffix, institution prefix."""
from __future__ import annotations

import pytest

from flows.apt.names import clean_bag_name, guess_institution, parse_bag_name
from tasks.errors import UserError


@pytest.mark.parametrize(
    "tar_name, name, part, parts",
    [
        ("test.edu.my_bag.tar", "test.edu.my_bag", None, None),
        ("test.edu.my_bag.b001.of002.tar", "test.edu.my_bag", 1, 2),
        ("test.edu.my_bag.b02.of12.tar", "test.edu.my_bag", 2, 12),
        ("receiving/test.edu.my_bag.b2.of2.tar", "test.edu.my_bag", 2, 2),
        ("test.edu.my_bag", "test.edu.my_bag", None, None),
        # only a trailing suffix counts; ".b1.of2" in the middle is part of the name
        ("test.edu.x.b1.of2.more.tar", "test.edu.x.b1.of2.more", None, None),
    ],
)
def test_parse_bag_name(tar_name: str, name: str, part: int | None, parts: int | None) -> None:
    bag = parse_bag_name(tar_name)
    assert (bag.name, bag.part, bag.parts) == (name, part, parts)
    assert bag.is_multipart is (part is not None)
    assert clean_bag_name(tar_name) == name


@pytest.mark.parametrize(
    "name, institution",
    [
        ("test.edu.my_bag", "test.edu"),
        ("lib.virginia.edu.my_bag", "lib.virginia.edu"),
        ("aptrust.org.bag.with.dots", "aptrust.org"),
        ("ox.ac.uk.papers", "ox.ac.uk"),
        ("btr_good_sha256", None),
        ("test.edu", None),  # nothing after the domain: not a prefixed bag name
    ],
)
def test_guess_institution(name: str, institution: str | None) -> None:
    assert guess_institution(name) == institution


def test_identifiers_follow_aptrust() -> None:
    bag = parse_bag_name("example.edu.sample_good.tar")
    assert bag.identifier == "example.edu/example.edu.sample_good"
    assert bag.file_identifier("data/x") == "example.edu/example.edu.sample_good/data/x"
    explicit = parse_bag_name("btr_good.tar", institution="example.edu")
    assert explicit.identifier == "example.edu/btr_good"
    assert parse_bag_name("btr_good.tar").identifier == "btr_good"


@pytest.mark.parametrize("bad", ["x.b03.of02.tar", "x.b0.of02.tar", ".tar", "..tar"])
def test_impossible_names(bad: str) -> None:
    with pytest.raises(UserError):
        parse_bag_name(bad)
