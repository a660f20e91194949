"""One run per cube at a time (tasks/claims): two ingests of the same file at once record one cube, and
the second reports the first's result (unchanged: skipped) instead of ingesting it again; two files
claiming one observation id at once never both write it.

The checksum step is slowed so that the two runs certainly overlap: without the claim, both are
inside it together."""
from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


class SlowVerify:
    """``verify_checksums`` as it is, after a pause; counts how many runs are inside it at once."""

    def __init__(self, real, pause: float = 1.5) -> None:
        self.real, self.pause = real, pause
        self.inside = self.most = self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.inside += 1
            self.calls += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(self.pause)
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.fixture
def slow_verify(monkeypatch):
    from flows.fits import header

    slow = SlowVerify(header.verify_checksums)
    monkeypatch.setattr(header, "verify_checksums", slow)
    return slow


def _both(fits_env, first, second) -> list[tuple[int, dict]]:
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(fits_env.run, first)]
        time.sleep(0.3)  # the second starts while the first is at work
        futures.append(pool.submit(fits_env.run, second))
        return [f.result(timeout=300) for f in futures]


def test_two_ingests_of_one_cube_at_once_record_it_once(fits_env, slow_verify):
    cube = fits_env.cube()
    (code_a, a), (code_b, b) = _both(fits_env, cube, cube)
    assert (code_a, code_b) == (0, 0), (a, b)
    assert slow_verify.most == 1 and slow_verify.calls == 1  # the second never read the data
    assert [a["state"], b["state"]] == ["ingested", "skipped"]
    assert a["oid"] == b["oid"] and a["checksums"] == b["checksums"] and a["size"] == b["size"]
    assert b["work_order"]["attempts"] == 2 and b["work_order"]["state"] == "Completed"
    with fits_env.registry() as r:
        assert len(r.execute("SELECT id FROM fits_cubes WHERE oid = %s", (a["oid"],))) == 1
        ingest = r.execute("SELECT id, state FROM ingests WHERE domain = 'fits' AND natural_key = %s", (a["oid"],))
        assert len(ingest) == 1 and ingest[0]["state"] == "skipped"
        outcomes = sorted(e["outcome"] for e in r.events(ingest[0]["id"]) if e["event_type"] == "ingestion")
    assert outcomes == ["skipped", "success"]
    assert [m["routing_key"] for m in fits_env.outbox()] == ["fits.ingest.ingested", "fits.ingest.skipped"]


def test_two_files_with_one_oid_at_once_never_both_write_it(fits_env, slow_verify):
    first = fits_env.cube("2019-04-16/CRISP")
    (fits_env.science / "copy").mkdir()
    second = fits_env.science / "copy" / first.name
    shutil.copy(first, second)
    results = _both(fits_env, first, second)
    assert slow_verify.most == 2  # different files: their data is read side by side
    assert sorted(code for code, _ in results) == [0, 1], results
    (_, won), (_, lost) = sorted(results, key=lambda cr: cr[0])
    assert won["state"] == "ingested" and lost["state"] == "failed"
    assert "two files cannot share one OID" in lost["error"]
    assert won["path"] in lost["error"] and lost["path"] in lost["error"]
    with fits_env.registry() as r:
        assert [c["path"] for c in r.execute("SELECT path FROM fits_cubes WHERE oid = %s", (won["oid"],))] == [
            won["path"]]
