"""The single-pass tar scan: digests, metadata, streams, sinks, refusals."""
from __future__ import annotations

import hashlib
import io
import os
import random
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from corpus import APT_PAYLOAD, Case, make_bag, tar_bag

from flows.apt.bagfiles import FileType, is_metadata_file
from flows.apt.tarscan import ALGORITHMS, scan_bag, scan_bag_file
from tasks.errors import UserError
from tasks.staging import StagingArea


def _digests(data: bytes) -> dict[str, str]:
    return {a: hashlib.new(a, data).hexdigest() for a in ALGORITHMS}


def _bag_files(bag_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(bag_dir).as_posix(): p.read_bytes() for p in bag_dir.rglob("*") if p.is_file()}


def _unpacked(case: Case, tmp_path: Path) -> Path:
    with tarfile.open(case.tar) as tf:
        tf.extractall(tmp_path, filter="data")
    return next(tmp_path.iterdir())


def test_scan_records_every_file_with_all_digests(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    case = apt_corpus["good_aptrust"]
    scan = scan_bag_file(case.tar)
    expected = _bag_files(_unpacked(case, tmp_path))

    assert scan.top_dir == "example.edu.sample_good"
    assert set(scan.files) == set(expected)
    for path, data in expected.items():
        record = scan.files[path]
        assert record.size == len(data)
        assert record.checksums == _digests(data), path
    assert scan.files["data/datastream-DC"].file_type is FileType.PAYLOAD
    assert scan.files["manifest-md5.txt"].file_type is FileType.MANIFEST
    assert scan.files["tagmanifest-sha256.txt"].file_type is FileType.TAG_MANIFEST
    assert scan.files["aptrust-info.txt"].file_type is FileType.TAG
    assert scan.tar_size == case.tar.stat().st_size
    assert scan.payload_oxum() == (sum(map(len, APT_PAYLOAD.values())), len(APT_PAYLOAD))


def test_scan_keeps_and_parses_metadata(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    case = apt_corpus["good_aptrust"]
    scan = scan_bag_file(case.tar)
    bag_dir = _unpacked(case, tmp_path)

    kept = {p for p in _bag_files(bag_dir) if is_metadata_file(p)}
    assert set(scan.metadata) == kept == {
        "bagit.txt", "bag-info.txt", "aptrust-info.txt", "manifest-md5.txt", "manifest-sha256.txt",
        "tagmanifest-md5.txt", "tagmanifest-sha256.txt",
    }
    for name in kept:
        assert scan.metadata[name] == (bag_dir / name).read_bytes()
    assert scan.tag("bagit.txt", "BagIt-Version") == "0.97"
    assert scan.tag("aptrust-info.txt", "access") == "Institution"  # tag names are case-insensitive
    assert scan.tag("bag-info.txt", "Source-Organization") == "Example University"
    assert scan.manifests["md5"] == {f"data/{k}": hashlib.md5(v).hexdigest() for k, v in APT_PAYLOAD.items()}
    assert scan.manifests["sha256"]["data/datastream-DC"] == hashlib.sha256(APT_PAYLOAD["datastream-DC"]).hexdigest()
    assert set(scan.tag_manifests) == {"md5", "sha256"}
    assert "manifest-md5.txt" in scan.tag_manifests["md5"]


def test_folded_tag_values_are_joined(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bags", "example.edu.folded", payload={"a.txt": b"a"},
                   aptrust_info=[("Title", "A long\n  folded title"), ("Access", "Consortia")])
    scan = scan_bag_file(tar_bag(bag, tmp_path / "example.edu.folded.tar"))
    assert scan.tag("aptrust-info.txt", "Title") == "A long folded title"


def test_non_seekable_pipe_gives_the_same_scan(apt_corpus: dict[str, Case]) -> None:
    case = apt_corpus["good_btr_sha512"]
    from_file = scan_bag_file(case.tar)
    with subprocess.Popen(["cat", str(case.tar)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and not proc.stdout.seekable()
        from_pipe = scan_bag(proc.stdout, bag_name=case.bag_name)
    assert from_pipe.files == from_file.files
    assert from_pipe.manifests == from_file.manifests
    assert from_pipe.tar_size == case.tar.stat().st_size


class _Trickle:
    """A read()-only stream (no readinto, no seek) returning short, uneven chunks, like a socket."""

    def __init__(self, data: bytes, seed: int = 7) -> None:
        self._data = memoryview(data)
        self._rand = random.Random(seed)

    def read(self, n: int = -1) -> bytes:
        n = len(self._data) if n is None or n < 0 else min(n, self._rand.randint(1, 3000))
        out, self._data = self._data[:n].tobytes(), self._data[n:]
        return out


def test_short_reads_without_readinto(apt_corpus: dict[str, Case]) -> None:
    case = apt_corpus["good_aptrust"]
    expected = scan_bag_file(case.tar)
    scan = scan_bag(_Trickle(case.tar.read_bytes()), bag_name=case.bag_name, block_size=4096)  # type: ignore[arg-type]
    assert scan.files == expected.files
    assert scan.metadata == expected.metadata


def test_large_files_and_small_blocks_hash_the_same(tmp_path: Path) -> None:
    big = os.urandom(700 << 10)  # above MultiHasher's threading threshold
    bag = make_bag(tmp_path / "bags", "example.edu.big", payload={"big.bin": big, "small.txt": b"s" * 1000})
    tar = tar_bag(bag, tmp_path / "example.edu.big.tar")
    for block in (512, 64 << 10, 4 << 20):
        scan = scan_bag_file(tar, block_size=block)
        assert scan.files["data/big.bin"].checksums == _digests(big), block
        assert scan.files["data/small.txt"].checksums == _digests(b"s" * 1000), block


def test_sink_copies_members_in_the_same_pass(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    case = apt_corpus["good_aptrust"]
    staging = StagingArea(tmp_path / "staging")
    seen: list[str] = []

    def sink(path: str, member: tarfile.TarInfo):
        return staging.atomic_writer(f"bag/{path}") if path.startswith("data/") else None

    scan = scan_bag_file(case.tar, sink=sink, on_file=lambda r: seen.append(r.path))
    assert seen == list(scan.files)  # every record, in tar order
    for name, data in APT_PAYLOAD.items():
        assert staging.path(f"bag/data/{name}").read_bytes() == data
    assert sorted(p.name for p in staging.leftovers()) == sorted(APT_PAYLOAD)


def test_sink_is_not_offered_unstorable_names(apt_corpus: dict[str, Case]) -> None:
    offered: list[str] = []
    scan = scan_bag_file(apt_corpus["illegal_control"].tar, sink=lambda p, m: offered.append(p))
    assert "data/datastream\x7f.txt" in scan.files
    assert "data/datastream\x7f.txt" in scan.name_errors
    assert "data/datastream\x7f.txt" not in offered and "data/datastream-DC" in offered


def test_truncated_member_leaves_no_partial_file(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    good = apt_corpus["good_aptrust"].tar
    with tarfile.open(good) as tf:
        marc = tf.getmember("example.edu.sample_good/data/datastream-MARC")
    cut = tmp_path / "example.edu.sample_good.tar"
    cut.write_bytes(good.read_bytes()[: marc.offset_data + 100])
    staging = StagingArea(tmp_path / "staging")

    def sink(path: str, member: tarfile.TarInfo):
        return staging.atomic_writer(path.replace("/", "_"))

    message = "^tar archive ends in the middle of 'example.edu.sample_good/data/datastream-MARC'$"
    with pytest.raises(UserError, match=message):
        scan_bag_file(cut, sink=sink)
    names = [p.name for p in staging.leftovers()]
    assert not any(n.endswith(".part") or "MARC" in n for n in names)


def test_metadata_size_caps(apt_corpus: dict[str, Case]) -> None:
    tar = apt_corpus["good_aptrust"].tar
    with pytest.raises(UserError, match=r"^\S+\.txt is \d+ bytes, over the limit of 10 bytes$"):
        scan_bag_file(tar, max_tag_file_size=10)
    with pytest.raises(UserError, match=r"^(tag)?manifest-\w+\.txt is \d+ bytes, over the limit of 20 bytes$"):
        scan_bag_file(tar, max_manifest_size=20)
    with pytest.raises(UserError, match="over the limit of 100"):
        scan_bag_file(tar, max_file_size=100)


def test_dot_slash_member_names(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    bag_dir = _unpacked(apt_corpus["good_aptrust"], tmp_path / "x")
    dotted = tar_bag(bag_dir, tmp_path / "dotted.tar", arcname="./example.edu.sample_good")
    scan = scan_bag_file(dotted)
    assert scan.top_dir == "example.edu.sample_good"
    assert "data/datastream-DC" in scan.files

    # `tar -C bag .` puts the bag's files at the top level, behind a "./" entry.
    flat = tmp_path / "example.edu.sample_good.tar"
    subprocess.run(["tar", "-cf", str(flat), "-C", str(bag_dir), "."], check=True)
    with pytest.raises(UserError, match=r"^Illegal path, '[^/]+'\. Should start with 'example\.edu\.sample_good/'\.$"):
        scan_bag_file(flat)


def test_data_after_end_of_archive_is_refused(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    tar = tmp_path / "x.tar"
    tar.write_bytes(apt_corpus["good_aptrust"].tar.read_bytes() + b"trailing junk" * 100)
    with pytest.raises(UserError, match="truncated or damaged"):
        scan_bag_file(tar)


def test_corrupt_header_mid_archive_is_refused(apt_corpus: dict[str, Case], tmp_path: Path) -> None:
    data = bytearray(apt_corpus["good_aptrust"].tar.read_bytes())
    with tarfile.open(apt_corpus["good_aptrust"].tar) as tf:
        third = tf.getmembers()[3]
    data[third.offset + 148: third.offset + 156] = b"9999999\0"  # break the header checksum
    tar = tmp_path / "x.tar"
    tar.write_bytes(bytes(data))
    with pytest.raises(UserError, match="truncated or damaged"):
        scan_bag_file(tar)


def test_refused_tars(apt_corpus: dict[str, Case]) -> None:
    refused = [c for c in apt_corpus.values() if c.scan_error is not None]
    expected = {"dotdot", "absolute", "symlink", "hardlink", "fifo", "no_top_dir", "two_top_dirs", "duplicate"}
    assert expected <= {c.key for c in refused}
    for case in refused:
        with pytest.raises(UserError) as info:
            scan_bag_file(case.tar, bag_name=case.bag_name)
        if case.scan_error_exact:
            assert info.value.message == case.scan_error, case.key
        else:
            assert case.scan_error in info.value.message, case.key


def test_member_names_never_reach_messages_raw(tmp_path: Path) -> None:
    from corpus import member, raw_tar

    tar = raw_tar(tmp_path / "t.tar", [(member("bad\x1bname.txt"), b"x")])
    with pytest.raises(UserError) as info:
        scan_bag_file(tar)
    assert "\x1b" not in info.value.message and re.search(r"bad\\u001bname", info.value.message)


def test_empty_archive(tmp_path: Path) -> None:
    tar = tmp_path / "empty.tar"
    with tarfile.open(tar, "w"):
        pass
    with pytest.raises(UserError, match="holds no files|not a readable tar"):
        scan_bag(io.BytesIO(tar.read_bytes()))


def test_undecodable_names_are_recorded_for_the_validator(tmp_path: Path) -> None:
    tar = tmp_path / "example.edu.latin1.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        info = tarfile.TarInfo("example.edu.latin1/data/caf\udce9.txt")  # b"caf\xe9": Latin-1, not UTF-8
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    scan = scan_bag_file(tar)
    assert scan.name_errors == {"data/caf\udce9.txt": "File name 'data/caf\\xe9.txt' is not valid UTF-8"}
