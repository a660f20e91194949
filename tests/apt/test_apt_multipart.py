"""Multipart bags (issue 14): each part of ``x.b01.of02.tar`` is a valid bag of the one object
``<institution>/x``; files from every part are recorded under it, in whatever order the parts come,
and a missing part leaves the object holding what has arrived (as at APTrust), reported, never fatal."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import AptEnv
from test_apt_flow import bag_members, object_rows, preserved, rows

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


def build_parts(env: AptEnv, tmp_path: Path, name: str, parts: int) -> list[Path]:
    """``parts`` tars, each a valid bag untarring to its part name, each with its own payload files."""
    from flows.apt.samples import build_bag

    bag = f"{env.institution}.{name}"
    return [build_bag(tmp_path / f"p{n}", f"{bag}.b{n:02d}.of{parts:02d}",
                      {f"data/part{n}/file{i}.txt": f"part {n} file {i}\n".encode() * (i + 1) for i in range(3)},
                      title=f"Multipart {name}", bag_info={"Bag-Count": f"{n} of {parts}"})
            for n in range(1, parts + 1)]


def check_object(env: AptEnv, identifier: str, tars: list[Path], last: Path) -> dict[str, dict]:
    """Every preserved file of every part is one active file of the object, none marked missing;
    tag files every part carries hold the bytes of the part recorded last."""
    obj, files = object_rows(env, identifier)
    expected: dict[str, bytes] = {}
    for tar in tars:
        expected.update(preserved(bag_members(tar)))
    expected.update(preserved(bag_members(last)))
    assert set(files) == set(expected)
    assert all(f["state"] == "A" and f["missing_since_work_item"] is None for f in files.values())
    for path, f in files.items():
        newest = rows(env, "SELECT digest FROM apt_checksums WHERE file_id = %s AND algorithm = 'sha256' "
                           "ORDER BY id DESC LIMIT 1", f["id"])[0]["digest"]
        assert newest == hashlib.sha256(expected[path]).hexdigest(), path
        for target in ("standard-va", "standard-or"):
            assert (env.target_dir(target) / str(f["uuid"])).read_bytes() == expected[path]
    assert obj["state"] == "A"
    return files


@pytest.mark.parametrize("order", [(1, 2), (2, 1)], ids=["in-order", "reversed"])
def test_two_parts_make_one_object(apt_env: AptEnv, tmp_path: Path, order: tuple[int, int]) -> None:
    tars = build_parts(apt_env, tmp_path, "two", 2)
    identifier = f"{apt_env.institution}/{apt_env.institution}.two"
    first, second = (tars[n - 1] for n in order)

    code, one = apt_env.run(first)
    assert code == 0, one
    assert one["object"]["identifier"] == identifier
    assert one["multipart"] == {"part": order[0], "parts": 2, "received": [order[0]], "missing": [order[1]],
                                "inconsistent_counts": []}
    assert f"the object still lacks part(s) {order[1]}" in one["note"]
    check_object(apt_env, identifier, [first], first)

    code, two = apt_env.run(second)
    assert code == 0, two
    assert two["object"]["identifier"] == identifier and two["work_item_id"] != one["work_item_id"]
    assert two["multipart"]["received"] == [1, 2] and two["multipart"]["missing"] == []
    assert "every part of the object is in" in two["note"]
    assert two["recorded"]["absent_files"] == 0 and not two["recorded"]["first_ingest"]
    files = check_object(apt_env, identifier, tars, second)
    assert {p for p in files if p.startswith("data/")} == {f"data/part{n}/file{i}.txt" for n in (1, 2)
                                                          for i in range(3)}
    assert two["file_count"] == len(files)
    parts = rows(apt_env, "SELECT p.* FROM apt_object_parts p JOIN apt_objects o ON o.id = p.object_id "
                          "WHERE o.identifier = %s ORDER BY part", identifier)
    assert [(p["part"], p["parts"], p["tar_name"]) for p in parts] == [
        (n, 2, tars[n - 1].name) for n in (1, 2)]
    # one object, created by the first part to arrive; each part its own work item and ingest events
    assert rows(apt_env, "SELECT count(*) AS n FROM apt_objects WHERE identifier = %s", identifier)[0]["n"] == 1
    created = rows(apt_env, "SELECT created_by_work_item FROM apt_objects WHERE identifier = %s",
                   identifier)[0]["created_by_work_item"]
    assert created == one["work_item_id"]
    assert one["events"].get("creation") == 1 and "creation" not in two["events"]
    from tasks.notify import pending

    assert [n.routing_key for n in pending()] == ["apt.ingest.success", "apt.ingest.success"]
    assert apt_env.staging_files() == [] and not any((apt_env.receiving / apt_env.institution).iterdir())


def test_a_missing_part_leaves_the_object_with_what_arrived(apt_env: AptEnv, tmp_path: Path) -> None:
    tars = build_parts(apt_env, tmp_path, "three", 3)
    identifier = f"{apt_env.institution}/{apt_env.institution}.three"
    code, one = apt_env.run(tars[0])
    assert code == 0, one
    code, three = apt_env.run(tars[2])
    assert code == 0, three
    assert three["status"] == "Success"
    assert three["multipart"]["received"] == [1, 3] and three["multipart"]["missing"] == [2]
    assert "the object still lacks part(s) 2" in three["note"]
    files = check_object(apt_env, identifier, [tars[0], tars[2]], tars[2])
    assert not any(p.startswith("data/part2/") for p in files)
    assert three["object"]["state"] == "A" and three["multipart"]["inconsistent_counts"] == []

    # a part that disagrees on the count is ingested too; the disagreement is reported
    from flows.apt.samples import build_bag

    four = build_bag(tmp_path / "p4", f"{apt_env.institution}.three.b04.of04", {"data/part4/x.txt": b"x\n"})
    code, fourth = apt_env.run(four)
    assert code == 0, fourth
    assert fourth["multipart"]["inconsistent_counts"] == [3, 4] and fourth["multipart"]["missing"] == [2]


def test_runs_of_one_object_take_turns(apt_env: AptEnv, tmp_path: Path) -> None:
    """Two parts (or two runs of one part) never store or record at once: the second waits for the claim."""
    import threading

    from flows.apt import steps
    from flows.apt.cli import choose_work_item

    tars = build_parts(apt_env, tmp_path, "turns", 2)
    first, second = apt_env.config(), apt_env.config()
    try:
        items = [choose_work_item(c, c.receiving.put(apt_env.institution, t))[1]
                 for c, t in ((first, tars[0]), (second, tars[1]))]
        steps.start(first, items[0], None)
        from tasks.claims import is_claimed

        with apt_env.registry() as reg:  # reconcile sees the live run on the work item's ingest
            assert is_claimed(reg, "apt", f"{apt_env.institution}/{apt_env.institution}.turns#wi{items[0]}")
        started: list[int] = []
        waiter = threading.Thread(target=lambda: started.append(steps.start(second, items[1], None).id))
        waiter.start()
        waiter.join(2.0)
        assert waiter.is_alive() and started == []  # part 2 waits while part 1's run holds the object
        first.close()  # part 1's run ends (or dies): its connection, and the claim, go
        waiter.join(30)
        assert started == [items[1]]
    finally:
        first.close()
        second.close()
