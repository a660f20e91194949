"""confine() and the staging area's atomic completion."""
from __future__ import annotations

import os
import tarfile
import io
from pathlib import Path

import pytest

from tasks.errors import UserError
from tasks.staging import StagingArea, confine
from tasks.validation import check_tar_member, parse_json_message, validate_json


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../x", "a\nb", "", "x\x00y", "..", "a/.."])
def test_confine_refuses(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UserError):
        confine(tmp_path, bad)


def test_confine_refuses_symlink_out(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    os.symlink("/", tmp_path / "root" / "escape")
    with pytest.raises(UserError, match="outside"):
        confine(tmp_path / "root", "escape")
    with pytest.raises(UserError, match="outside"):
        confine(tmp_path / "root", "escape/etc/passwd")


def test_confine_accepts_inside(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "link-inside")
    assert confine(tmp_path, "a/b.txt") == tmp_path.resolve() / "a" / "b.txt"
    assert confine(tmp_path, "link-inside/c") == tmp_path.resolve() / "a" / "c"


def test_atomic_writer_completes_or_leaves_nothing(tmp_path: Path) -> None:
    area = StagingArea(tmp_path / "staging")
    name = area.new_name(".c4gh")
    with area.atomic_writer(name) as fh:
        fh.write(b"abc")
        assert not area.path(name).exists()  # invisible until complete
    assert area.path(name).read_bytes() == b"abc"
    with pytest.raises(RuntimeError):
        with area.atomic_writer("other") as fh:
            fh.write(b"partial")
            raise RuntimeError("boom")
    assert area.leftovers() == [area.path(name)]
    area.remove(name)
    assert area.leftovers() == []


def test_cleanup_prefix_is_a_directory_boundary(tmp_path: Path) -> None:
    area = StagingArea(tmp_path)
    for item in ("12", "123"):
        with area.atomic_writer(f"{item}/f") as fh:
            fh.write(b"x")
    area.cleanup_prefix("12/")
    assert [p.parent.name for p in area.leftovers()] == ["123"]


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


def test_tar_member_rules() -> None:
    assert check_tar_member(_member("./bag/data/a.txt")) == "bag/data/a.txt"
    assert check_tar_member(_member("bag/data/", tarfile.DIRTYPE)) == "bag/data"
    for bad, msg in [
        (_member("../x"), r"\.\."), (_member("/abs"), "absolute"), (_member("bag/a\x01"), "control"),
        (_member("bag/l", tarfile.SYMTYPE, linkname="/etc"), "link"),
        (_member("bag/h", tarfile.LNKTYPE, linkname="bag/a"), "link"),
        (_member("bag/dev", tarfile.CHRTYPE), "not a regular file"),
        (_member("bag/fifo", tarfile.FIFOTYPE), "not a regular file"),
        (_member("bag/" + "x" * 2000), "longer"),
    ]:
        with pytest.raises(UserError, match=msg):
            check_tar_member(bad)
    with pytest.raises(UserError, match="over the limit"):
        check_tar_member(_member("bag/big", size=11), max_size=10)


def test_tar_members_from_a_real_stream() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"x"
        tar.addfile(_member("bag/ok", size=1), io.BytesIO(data))
        tar.addfile(_member("bag/escape", tarfile.SYMTYPE, linkname="../../etc/passwd"))
    buf.seek(0)
    seen = []
    with tarfile.open(fileobj=buf, mode="r|") as tar:
        for m in tar:
            try:
                seen.append(check_tar_member(m))
            except UserError as exc:
                seen.append(f"refused: {exc}")
    assert seen[0] == "bag/ok" and seen[1].startswith("refused: tar member 'bag/escape' is a link")


SCHEMA = {"type": "object", "required": ["user", "filepath"],
          "properties": {"user": {"type": "string", "minLength": 1}, "filepath": {"type": "string"},
                         "n": {"type": "integer"}}}


def test_json_validation_is_precise() -> None:
    assert validate_json({"user": "u", "filepath": "f"}, SCHEMA)
    with pytest.raises(UserError) as err:
        validate_json({"user": "", "n": "x"}, SCHEMA)
    text = str(err.value)
    assert "'filepath' is a required property" in text
    assert "user: '' should be non-empty" in text or "user:" in text
    assert "n: 'x' is not of type 'integer'" in text
    with pytest.raises(UserError, match="not valid JSON"):
        parse_json_message(b"{nope")
