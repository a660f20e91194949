"""NGAS client against the fake NGAS server (real HTTP on loopback), and against a real NGAS if
``NGAS_URL`` is set."""
from __future__ import annotations

import os
import tracemalloc
import zlib
from pathlib import Path

import pytest
from fake_ngas import FakeNgas

from flows.nrao import samples
from flows.nrao.collectors import COLLECTORS
from flows.nrao.manifest import archive_plan, finish_setup
from flows.nrao.ngas import (
    QARCHIVE,
    NgasChecksumMismatch,
    NgasClient,
    NgasFailure,
    NgasFileUnavailable,
    NgasUnavailable,
    crc_matches,
    crc_to_ngas,
    parse_status,
)
from flows.nrao.products import IngestionType
from tasks.checksum import hash_file
from tasks.errors import UserError, is_user_error

KINDS = {
    "calibration": (samples.make_calibration_run, {"input_locator": "uid://evla/execblock/eb-1"}),
    "image": (samples.make_image_run, {"input_locator": "uid://evla/calibration/cal-1"}),
    "seci": (samples.make_seci_run, {"input_locator": "uid://evla/calibration/cal-2"}),
    "observation": (samples.make_observation, {}),
}


def high_bit_file(path: Path, size: int = 200_000) -> Path:
    """A file whose CRC-32 has the top bit set, so a signed NGAS checksum is negative."""
    base = bytearray(samples._pattern(size, 7))
    for i in range(256):
        base[-1] = i
        if zlib.crc32(bytes(base)) >= 1 << 31:
            path.write_bytes(bytes(base))
            return path
    raise AssertionError("no high-bit CRC found")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_archive_every_file_of_a_product_and_retrieve_it_back(roots, tmp_path, fake_ngas, ngas, kind) -> None:
    src, staging = roots
    maker, manifest_kw = KINDS[kind]
    staged = COLLECTORS[IngestionType(kind)](src, maker(src), staging, f"req-{kind}")
    manifest = finish_setup(staged, **manifest_kw)
    plan = archive_plan(staged, manifest)
    assert len(plan) >= 3

    results = [ngas.archive(item.path, file_id=item.file_id, mime_type=item.mime_type) for item in plan]
    out = tmp_path / "back"
    out.mkdir()
    for item, result in zip(plan, results):
        assert (result.file_id, result.file_version) == (item.file_id, 1)
        assert result.file_size == item.path.stat().st_size
        rec = fake_ngas.record(item.file_id)
        assert rec.mime == item.mime_type and rec.checksum == result.checksum
        back = ngas.retrieve(item.file_id, out)  # a directory: NGAS's Content-Disposition names the file
        assert back.path == out / item.file_id
        assert back.path.read_bytes() == item.path.read_bytes()
        assert back.digests["crc32c"] == result.digests["crc32c"]


def test_archive_request_is_shaped_like_ngamsPClient(tmp_path, fake_ngas, ngas) -> None:
    path = tmp_path / "x.fits"
    path.write_bytes(b"SIMPLE  =" + b" " * 2871)
    ngas.archive(path, file_id="uid___evla_image_1.fits")
    probe, req = fake_ngas.requests  # the mime type is probed once, before the first push of its kind
    assert (probe.method, probe.command, probe.params) == (
        "GET", "ARCHIVE", {"probe": "1", "mime_type": "image/x-fits", "filename": "uid___evla_image_1.fits"})
    assert (req.method, req.command) == ("POST", "ARCHIVE")
    assert req.params == {"filename": "uid___evla_image_1.fits", "mime_type": "image/x-fits",
                          "no_versioning": "0", "crc_variant": "crc32c"}
    assert req.headers["Content-Length"] == "2880"
    assert "Transfer-Encoding" not in req.headers
    assert req.headers["Content-Type"] == "image/x-fits"
    assert req.headers["Content-Disposition"] == 'attachment; filename="uid___evla_image_1.fits"'


def test_qarchive_when_configured(tmp_path, fake_ngas) -> None:
    path = tmp_path / "f.tar"
    path.write_bytes(b"t" * 1000)
    with NgasClient(fake_ngas.url, archive_command=QARCHIVE) as client:
        assert client.archive(path).file_version == 1
    assert fake_ngas.requests[-1].command == "QARCHIVE"


def test_rearchive_makes_a_new_version(tmp_path, fake_ngas, ngas) -> None:
    path = tmp_path / "f.tar"
    path.write_bytes(b"one")
    assert ngas.archive(path, file_id="fid.tar").file_version == 1
    path.write_bytes(b"two!")
    assert ngas.archive(path, file_id="fid.tar").file_version == 2
    assert fake_ngas.versions("fid.tar") == [1, 2]
    assert ngas.file_status("fid.tar").file_version == 2
    ngas.retrieve("fid.tar", tmp_path / "v1", file_version=1)
    assert (tmp_path / "v1").read_bytes() == b"one"
    path.write_bytes(b"three")
    assert ngas.archive(path, file_id="fid.tar", no_versioning=True).file_version == 2
    assert fake_ngas.versions("fid.tar") == [1, 2]


def test_failure_reply_carries_ngas_message_and_is_not_retried(tmp_path, fake_ngas, ngas) -> None:
    path = tmp_path / "f.fits"
    path.write_bytes(b"x" * 5000)
    msg = "NGAMS_ER_DAPI_BAD_FILE:4011:ERROR: Data Archiving Plug-In: ngamsFitsPlugIn failed: missing ARCFILE"
    fake_ngas.fail_next(msg)
    with pytest.raises(NgasFailure) as err:
        ngas.archive(path, label="products/f.fits")
    assert err.value.ngas_message == msg and err.value.http_status == 400
    assert err.value.message == f"NGAS refused products/f.fits (NGAS file id f.fits, mime type image/x-fits): {msg}"
    assert isinstance(err.value, UserError) and is_user_error(err.value)
    assert len(fake_ngas.pushes()) == 1
    assert fake_ngas.versions("f.fits") == []


def test_503_is_retried_with_backoff_then_succeeds(tmp_path, fake_ngas) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(300_000))
    pauses: list[float] = []
    fake_ngas.unavailable_next(2)
    with NgasClient(fake_ngas.url, retries=4, backoff=0.5, sleep=pauses.append) as client:
        result = client.archive(path)
    assert result.attempts == 3 and result.file_version == 1
    assert pauses == [0.5, 1.0]
    assert fake_ngas.stored_path("f.bin").read_bytes() == path.read_bytes()


def test_503_every_time_is_transient_not_user_error(tmp_path, fake_ngas) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"z" * 100)
    fake_ngas.unavailable_next(10)
    with NgasClient(fake_ngas.url, retries=3, sleep=lambda s: None) as client:
        with pytest.raises(NgasUnavailable, match="after 3 attempts.*503") as err:
            client.archive(path)
    assert not is_user_error(err.value)
    assert len(fake_ngas.pushes()) == 3


def test_connection_refused_is_transient(tmp_path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "f.bin"
    path.write_bytes(b"z")
    with NgasClient(f"http://127.0.0.1:{port}", retries=2, sleep=lambda s: None) as client:
        with pytest.raises(NgasUnavailable, match="ConnectError"):
            client.archive(path)
        with pytest.raises(NgasUnavailable):
            client.retrieve("x", tmp_path / "y")


def test_crc_mismatch_fails_and_is_not_a_user_error(tmp_path, fake_ngas, ngas) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(70_000))
    fake_ngas.corrupt_checksum_next()
    with pytest.raises(NgasChecksumMismatch, match="checksum mismatch for f.bin version 1") as err:
        ngas.archive(path)
    assert not is_user_error(err.value)
    assert ngas.archive(path).file_version == 2  # the retry the flow would make succeeds


@pytest.mark.parametrize("server_variant, legacy_signed, command, plugin, negative", [
    ("ngamsGenCrc32", False, "ARCHIVE", "ngamsGenCrc32", False),  # NGAS 12 on Python 3: unsigned
    ("ngamsGenCrc32", True, "ARCHIVE", "ngamsGenCrc32", True),    # NGAS on Python 2: signed
    ("crc32", False, "ARCHIVE", "ngamsGenCrc32", False),          # ARCHIVE names crc32 the legacy way
    ("crc32", True, "ARCHIVE", "ngamsGenCrc32", True),
    ("crc32", False, "QARCHIVE", "crc32", False),
    ("crc32", True, "QARCHIVE", "crc32", True),
    ("crc32z", False, "ARCHIVE", "crc32z", False),
    ("crc32c", False, "ARCHIVE", "crc32c", False),
])
def test_server_chosen_crc_variants_verify(tmp_path, server_variant, legacy_signed, command, plugin,
                                           negative) -> None:
    path = high_bit_file(tmp_path / "hb.bin")
    with FakeNgas(tmp_path / "ngas", crc_variant=server_variant, legacy_signed=legacy_signed) as server, \
            NgasClient(server.url, crc_variant=None, archive_command=command) as client:
        result = client.archive(path)
        assert result.checksum_plugin == plugin
        assert result.checksum.startswith("-") == negative
        assert "crc_variant" not in server.pushes()[-1].params
        assert set(result.digests) == {"crc32", "crc32c"}  # both computed in the single pass


@pytest.mark.parametrize("legacy_signed", [False, True])
def test_server_ignoring_requested_variant_is_still_verified(tmp_path, legacy_signed) -> None:
    """An old NGAS ignores crc_variant and uses ngamsGenCrc32: we re-read once and still verify,
    whether it reports the CRC unsigned (Python 3) or signed (Python 2)."""
    path = high_bit_file(tmp_path / "hb.bin")
    with FakeNgas(tmp_path / "ngas", crc_variant="ngamsGenCrc32", honour_crc_variant=False,
                  legacy_signed=legacy_signed) as server, NgasClient(server.url, crc_variant="crc32c") as client:
        result = client.archive(path)
    assert result.checksum_plugin == "ngamsGenCrc32"
    assert (int(result.checksum) < 0) == legacy_signed and int(result.checksum) & 0xFFFFFFFF >= 1 << 31
    assert result.digests["crc32"] == hash_file(path, ("crc32",)).checksums["crc32"]


def test_crc_encodings() -> None:
    assert crc_to_ngas("ngamsGenCrc32", "ffffffff") == "4294967295"  # NGAS 12 (Python 3)
    assert crc_to_ngas("ngamsGenCrc32", "ffffffff", signed=True) == "-1"  # NGAS on Python 2
    assert crc_to_ngas("crc32c", "ffffffff", signed=True) == "4294967295"
    assert crc_matches("ngamsGenCrc32", "4294967295", "ffffffff") and crc_matches("ngamsGenCrc32", "-1", "ffffffff")
    assert crc_matches("crc32", "-1", "ffffffff") and crc_matches("crc32", "4294967295", "ffffffff")
    assert crc_matches("ngamsGenCrc32", "-2", "fffffffe")
    assert not crc_matches("crc32c", "-1", "ffffffff")  # crc32c is always unsigned
    assert not crc_matches("crc32z", "-1", "ffffffff")
    assert not crc_matches("crc32", "junk", "00000000")


def test_status_checkfile_and_unknown_files(tmp_path, fake_ngas, ngas) -> None:
    path = tmp_path / "f.tar"
    path.write_bytes(os.urandom(10_000))
    ngas.archive(path, file_id="uid___evla_x.tar")
    server = ngas.status()
    assert server.ok and server.state == "ONLINE" and server.host_id == fake_ngas.host_id
    fs = ngas.file_status("uid___evla_x.tar")
    assert (fs.file_version, fs.file_size, fs.checksum_plugin) == (1, 10_000, "crc32c")
    assert ngas.check_file("uid___evla_x.tar", 1).ok
    with pytest.raises(NgasFileUnavailable, match="NGAMS_ER_UNAVAIL_FILE.*nope"):
        ngas.file_status("nope")
    with pytest.raises(NgasFileUnavailable, match="NGAMS_ER_UNAVAIL_FILE") as err:
        ngas.retrieve("nope", tmp_path / "nope")
    assert err.value.http_status == 400  # NGAS 12 answers an unknown file 400, not 404
    assert is_user_error(err.value)
    assert not (tmp_path / "nope").exists()


def test_retrieve_retries_a_503(tmp_path, fake_ngas, ngas) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(50_000))
    ngas.archive(path)
    fake_ngas.unavailable_next(1, commands={"RETRIEVE"})
    got = ngas.retrieve("f.bin", tmp_path / "g.bin")
    assert got.path.read_bytes() == path.read_bytes()
    assert [r.command for r in fake_ngas.requests if not r.probe] == ["ARCHIVE", "RETRIEVE", "RETRIEVE"]


def test_non_xml_reply_is_reported_readably() -> None:
    st = parse_status(b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", 502)
    assert st.status == "FAILURE" and st.message == "502 Bad Gateway nginx"
    st = parse_status(b'<?xml version="1.0"?>\n<!DOCTYPE NgamsStatus SYSTEM "x.dtd">\n'
                      b'<NgamsStatus><Status Status="FAILURE" Message="no"/></NgamsStatus>', 400)
    assert (st.status, st.message, st.ok) == ("FAILURE", "no", False)


def test_upload_memory_does_not_grow_with_file_size(tmp_path, fake_ngas) -> None:
    path = samples.make_sample_file(tmp_path / "big.bin", 64 << 20)
    with NgasClient(fake_ngas.url, block_size=1 << 20) as client:
        tracemalloc.start()
        try:
            client.archive(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 12 << 20, f"peak Python allocation {peak / 2**20:.1f} MiB for a 64 MiB upload"


@pytest.mark.integration
@pytest.mark.skipif(not os.environ.get("NGAS_URL"), reason="set NGAS_URL to test against a real NGAS server")
def test_against_real_ngas(tmp_path) -> None:
    path = tmp_path / f"archive-ingest-test-{os.getpid()}.bin"
    path.write_bytes(os.urandom(100_000))
    with NgasClient(os.environ["NGAS_URL"], crc_variant=os.environ.get("NGAS_CRC_VARIANT") or None,
                    archive_command=os.environ.get("NGAS_ARCHIVE_COMMAND", "QARCHIVE")) as client:
        result = client.archive(path)
        back = client.retrieve(result.file_id, tmp_path / "back.bin", file_version=result.file_version)
        assert back.path.read_bytes() == path.read_bytes()
        assert client.file_status(result.file_id, result.file_version).file_size == path.stat().st_size
        assert client.checkfile(result.file_id, result.file_version).ok


def test_envoy_steps_end_to_end_and_a_failure_records_nothing(roots, fake_ngas, ngas) -> None:
    from flows.nrao.envoy import archive_items, images_metadata, setup_ingestion

    src, staging = roots
    staged, manifest = setup_ingestion("image", src, samples.make_image_run(src), staging, "req",
                                       input_locator="uid://evla/calibration/cal-1")
    plan = archive_plan(staged, manifest)
    recorded: dict[str, int] = {}
    done = archive_items(ngas, plan[:3], extra_algorithms=("sha256",),
                         on_archived=lambda item, r: recorded.__setitem__(item.file_id, r.file_version))
    assert recorded == {i.file_id: 1 for i in plan[:3]}
    assert all(len(r.digests["sha256"]) == 64 for _, r in done)

    fake_ngas.corrupt_checksum_next(1)
    with pytest.raises(NgasChecksumMismatch):
        archive_items(ngas, plan[3:], on_archived=lambda item, r: recorded.__setitem__(item.file_id, r.file_version))
    assert plan[3].file_id not in recorded and len(recorded) == 3

    md = images_metadata(staged)
    assert set(md) == {sp.filename for sp in staged.science_products}
    cube = next(m for name, m in md.items() if ".cube." in name)
    assert cube.n_channels == 4 and cube.polarizations == ("I",)


def test_reads_follow_a_cluster_redirect(tmp_path, fake_ngas, ngas) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(30_000))
    with FakeNgas(tmp_path / "node2") as node2, NgasClient(node2.url) as direct:
        direct.archive(path, file_id="on-node2.bin")
        fake_ngas.redirect_next(node2.url, count=2, commands={"RETRIEVE", "STATUS"})
        got = ngas.retrieve("on-node2.bin", tmp_path / "got.bin")
        assert got.path.read_bytes() == path.read_bytes()
        assert ngas.file_status("on-node2.bin").file_size == 30_000
        assert [r.command for r in node2.requests if not r.probe] == ["ARCHIVE", "RETRIEVE", "STATUS"]
