"""Profile validation: every corpus bag gives exactly APTrust's errors."""
from __future__ import annotations

import tarfile
from pathlib import Path

import bagit
import pytest
from corpus import APTRUST_22, APTRUST_23, BTR, Case, make_bag, set_bag_info, tar_bag

from flows.apt.profile import DEFAULT_PROFILE, judging_profile_key, load_profile, profile_key
from flows.apt.tarscan import scan_bag_file
from flows.apt.validate import MAX_ERRORS, validate_bag
from tasks.errors import UserError


def _validate(case: Case):
    return validate_bag(scan_bag_file(case.tar, bag_name=case.bag_name), case.bag_name,
                        institution=case.institution, profile=case.profile)


def test_every_corpus_bag_gives_its_exact_errors(apt_corpus: dict[str, Case]) -> None:
    checked = 0
    for case in apt_corpus.values():
        if case.errors is None:
            continue
        errors = _validate(case).errors
        if case.ordered:
            assert errors == case.errors, case.key
        else:
            assert sorted(errors) == sorted(case.errors), case.key
        checked += 1
    assert checked >= 25


@pytest.mark.parametrize("key", ["good_aptrust", "good_btr_sha256", "good_btr_sha512", "multipart_b01",
                                 "multipart_b02", "multipart_clean_dir", "good_glacier_deep_or",
                                 "good_default_storage", "wasabi_tx_declares_v22", "v22_sha512_judged_by_v23",
                                 "unknown_profile", "btr_dart_identifier", "no_eof_blocks"])
def test_good_bags_are_valid(apt_corpus: dict[str, Case], key: str) -> None:
    result = _validate(apt_corpus[key])
    assert result.valid and result.errors == []
    result.raise_for_errors()


def test_aptrust_result_fields(apt_corpus: dict[str, Case]) -> None:
    result = _validate(apt_corpus["good_aptrust"])
    assert result.profile is not None and result.profile.key == "aptrust-2.3"
    assert result.profile_identifier == APTRUST_23
    assert result.bag.identifier == "example.edu/example.edu.sample_good"
    assert (result.access, result.storage_option, result.title) == ("institution", "Standard", "Sample Good Bag")
    assert result.description == "A bag APTrust accepts."
    assert result.source_organization == "Example University"
    assert result.bagit_version == "0.97"


def test_enumerated_values_are_case_insensitive_and_canonicalised(apt_corpus: dict[str, Case]) -> None:
    result = _validate(apt_corpus["good_glacier_deep_or"])
    assert (result.access, result.storage_option) == ("consortia", "Glacier-Deep-OR")
    assert _validate(apt_corpus["good_default_storage"]).storage_option == "Standard"


def test_btr_and_multipart_results(apt_corpus: dict[str, Case]) -> None:
    btr = _validate(apt_corpus["good_btr_sha512"])
    assert btr.profile is not None and btr.profile.key == "btr-1.0"
    assert btr.bag.identifier == "example.edu/btr_good_sha512"
    part = _validate(apt_corpus["multipart_b02"])
    assert (part.bag.name, part.bag.part, part.bag.parts) == ("example.edu.multipart", 2, 2)


def test_aptrust_bags_are_judged_by_the_current_profile_whatever_they_declare(
        apt_corpus: dict[str, Case]) -> None:
    """Issue 14: a valid Wasabi-TX bag that names APTrust 2.2 passes; BTR bags are judged by BTR."""
    wasabi = _validate(apt_corpus["wasabi_tx_declares_v22"])
    assert wasabi.errors == [] and wasabi.profile.key == "aptrust-2.3"
    assert wasabi.storage_option == "Wasabi-TX" and wasabi.profile_identifier == APTRUST_22  # as declared
    assert _validate(apt_corpus["btr_dart_identifier"]).profile.key == "btr-1.0"
    assert _validate(apt_corpus["good_btr_sha256"]).profile.key == "btr-1.0"
    assert _validate(apt_corpus["unknown_profile"]).profile.key == "aptrust-2.3"


@pytest.mark.parametrize("identifier, key", [
    (None, "aptrust-2.3"), ("", "aptrust-2.3"), (APTRUST_22, "aptrust-2.3"), (APTRUST_23, "aptrust-2.3"),
    ("https://example.org/custom.json", "aptrust-2.3"), (BTR, "btr-1.0"),
    ("https://github.com/dpscollaborative/btr_bagit_profile/releases/download/1.0/btr-bagit-profile.json",
     "btr-1.0"),
    ("https://raw.githubusercontent.com/APTrust/dart/master/profiles/btr-v0.1.json", "btr-1.0"),
])
def test_judging_profile_follows_aptrust(identifier: str | None, key: str) -> None:
    assert judging_profile_key(identifier) == key


def test_three_bad_tags_give_three_errors_in_aptrust_order(apt_corpus: dict[str, Case]) -> None:
    """Issue 14: the damaged manifest digest in the bag must not stop validation before the tags."""
    assert _validate(apt_corpus["tag_sample_bad"]).errors == [
        "In file aptrust-info.txt, required tag Title has no value",
        "In file aptrust-info.txt, tag Access has illegal value 'acksess'",
        "In file aptrust-info.txt, tag Storage-Option has illegal value 'Cardboard-Box'",
    ]


def test_errors_are_capped_like_aptrust(apt_corpus: dict[str, Case]) -> None:
    errors = _validate(apt_corpus["too_many_errors"]).errors
    assert len(errors) == MAX_ERRORS + 1 and errors[-1] == "Too many errors"


def test_raise_for_errors_carries_every_message(apt_corpus: dict[str, Case]) -> None:
    result = _validate(apt_corpus["tag_sample_bad"])
    with pytest.raises(UserError) as info:
        result.raise_for_errors()
    assert all(e in info.value.message for e in result.errors) and info.value.code == "invalid_bag"


def test_bagit_python_alone_accepts_what_aptrust_rejects(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    """Our oracle agrees with bagit-python on fixity, and goes further on profile rules."""
    def bagit_valid(case: Case) -> bool:
        target = tmp_path / case.key
        with tarfile.open(case.tar) as tf:
            tf.extractall(target, filter="data")
        try:
            bagit.Bag(str(next(target.iterdir()))).validate()
            return True
        except bagit.BagError:
            return False

    for key in ("good_aptrust", "good_btr_sha256"):
        assert bagit_valid(apt_corpus[key]) and _validate(apt_corpus[key]).valid
    for key in ("bad_checksums", "missing_data_file", "extraneous_file", "bad_oxum"):
        assert not bagit_valid(apt_corpus[key]) and not _validate(apt_corpus[key]).valid
    for key in ("bad_access", "no_aptrust_info", "no_title", "fetch_txt", "wrong_folder"):
        assert not _validate(apt_corpus[key]).valid, key
    assert bagit_valid(apt_corpus["bad_access"]) and bagit_valid(apt_corpus["no_aptrust_info"])


def test_malformed_payload_oxum(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bags", "example.edu.oxum", payload={"a.txt": b"abc"})
    set_bag_info(bag, {"Payload-Oxum": "three.1"})
    tar = tar_bag(bag, tmp_path / "example.edu.oxum.tar")
    result = validate_bag(scan_bag_file(tar), tar.name)
    assert result.errors == ["Malformed Payload-Oxum value: three.1"]


def test_missing_manifest_entry_for_a_manifest_in_tag_manifest(tmp_path: Path) -> None:
    """Payload manifests must be listed in every tag manifest (RFC 8493 §2.2.1)."""
    bag = make_bag(tmp_path / "bags", "example.edu.tm", payload={"a.txt": b"abc"}, checksums=["md5"])
    tm = bag / "tagmanifest-md5.txt"
    tm.write_text("".join(line + "\n" for line in tm.read_text().splitlines() if "manifest-md5.txt" not in line))
    tar = tar_bag(bag, tmp_path / "example.edu.tm.tar")
    result = validate_bag(scan_bag_file(tar), tar.name)
    assert result.errors == ["File example.edu/example.edu.tm/manifest-md5.txt is not in manifest tagmanifest-md5.txt"]


@pytest.mark.parametrize(
    "identifier, key",
    [
        (None, DEFAULT_PROFILE),
        ("", "aptrust-2.3"),
        (APTRUST_23, "aptrust-2.3"),
        (APTRUST_22, "aptrust-2.2"),
        ("https://github.com/APTrust/dart/blob/master/profiles/aptrust_2.2.json", "aptrust-2.2"),
        ("https://wiki.aptrust.org/APTrust_BagIt_Profile-2.3", "aptrust-2.3"),
        (BTR, "btr-1.0"),
        ("btr-1.0", "btr-1.0"),
    ],
)
def test_profile_selection(identifier: str | None, key: str) -> None:
    assert profile_key(identifier) == key
    assert load_profile(identifier).key == key


def test_unknown_profile_is_a_user_error() -> None:
    with pytest.raises(UserError, match="Unknown BagIt-Profile-Identifier 'https://example.org/x.json'"):
        load_profile("https://example.org/x.json")


def test_profiles_carry_aptrust_rules() -> None:
    v23 = load_profile(None)
    assert v23.accept_serialization == ("application/tar",) and not v23.allow_fetch_txt
    assert v23.accept_bagit_version == ("0.97", "1.0")
    assert v23.manifests_required == ("md5",) and set(v23.manifests_allowed) == {"md5", "sha1", "sha256", "sha512"}
    assert set(v23.tag_def("aptrust-info.txt", "Access").values) == {"Consortia", "Institution", "Restricted"}
    assert "Wasabi-TX" in v23.tag_def("aptrust-info.txt", "Storage-Option").values
    assert "Wasabi-TX" not in load_profile(APTRUST_22).tag_def("aptrust-info.txt", "Storage-Option").values
    btr = load_profile(BTR)
    required = {t.tag_name for t in btr.tags if t.required and t.tag_file == "bag-info.txt"}
    assert required == {"Source-Organization", "Bagging-Date", "Payload-Oxum", "BagIt-Profile-Identifier"}
    assert not btr.tar_dir_must_match_name and v23.tar_dir_must_match_name


def test_unicode_line_separators_in_names_are_legal(tmp_path: Path) -> None:
    """U+2028 is not a control character; it must not split the manifest line it sits on."""
    bag = make_bag(tmp_path / "bags", "example.edu.u2028", payload={"a\u2028b.txt": b"abc", "plain.txt": b"p"})
    tar = tar_bag(bag, tmp_path / "example.edu.u2028.tar")
    scan = scan_bag_file(tar)
    assert "data/a\u2028b.txt" in scan.manifests["md5"]
    assert validate_bag(scan, tar.name).errors == []
