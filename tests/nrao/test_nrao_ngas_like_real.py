"""What a real NGAS 12 does, held against the fake (tests/nrao/fake_ngas.py), our local archive
(flows/nrao/local_ngas.py) and the client: Streams per mime type, the stock plug-ins, CHECKFILE's
verdicts, unknown files as 400, unsigned legacy CRCs, and errors that name the file and mime type."""
from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from fake_ngas import NRAO_STREAMS, STOCK_STREAMS, FakeNgas

from flows.nrao import products
from flows.nrao.local_ngas import LocalNgas
from flows.nrao.ngas import NgasClient, NgasFailure, NgasFileUnavailable, parse_status

DOCS = Path(__file__).resolve().parents[2] / "docs" / "nrao.md"
REFUSED_BY_STOCK = ["text/xml", "application/json", "image/png", "text/plain", "multipart/related"]


def fits_bytes(*cards: str) -> bytes:
    header = "".join(c.ljust(80) for c in ("SIMPLE  =                    T", "BITPIX  =                    8",
                                          "NAXIS   =                    0", *cards, "END"))
    return header.ljust(2880).encode("ascii")


def raw_push(url: str, command: str, mime: str, body: bytes, file_id: str = "f.bin") -> httpx.Response:
    return httpx.post(f"{url}/{command}", params={"filename": file_id, "mime_type": mime},
                      headers={"Content-Type": mime}, content=body, timeout=10)


# ------------------------------------------------------------------ Streams


def test_the_flows_mime_types_are_the_streams_the_docs_and_the_fake_configure() -> None:
    """docs/nrao.md's <Streams> block, the fake's default and what the flow can send agree exactly."""
    text = DOCS.read_text()
    documented = dict(re.findall(r'<Stream MimeType="([^"]+)" PlugIn="([^"]+)"', text))
    sent = set(products._MIME_TYPES.values()) | {"multipart/related", "application/octet-stream"}
    assert set(documented) == sent == set(NRAO_STREAMS)
    assert set(documented.values()) == {"ngamsGenDapi"}


@pytest.mark.parametrize("mime", REFUSED_BY_STOCK)
def test_a_mime_type_without_a_stream_is_refused_as_ngas_does(tmp_path: Path, mime: str) -> None:
    with FakeNgas(tmp_path / "ngas", streams=STOCK_STREAMS) as fake:
        archive = raw_push(fake.url, "ARCHIVE", mime, b"x" * 1000, "uid___evla_x.xml")
        qarchive = raw_push(fake.url, "QARCHIVE", mime, b"x" * 1000, "uid___evla_x.xml")
        assert fake.files == {}
    st = parse_status(archive.content, archive.status_code)
    assert (archive.status_code, st.status) == (400, "FAILURE")
    assert st.message == (f"NGAMS_ER_UNKNOWN_MIME_TYPE2:4047:ERROR: Illegal mime-type: {mime} issued in Archive "
                          "Request for file with URI: uid___evla_x.xml. Rejecting request.")
    st = parse_status(qarchive.content, qarchive.status_code)
    assert (qarchive.status_code, st.status, st.message) == (400, "FAILURE", f"Unknown mime type: {mime}")


def test_a_large_push_of_an_unconfigured_mime_type_fails_clearly_before_sending(tmp_path: Path) -> None:
    """NGAS refuses before reading the body and closes; the client's probe finds out first."""
    path = tmp_path / "ASDM.xml"
    path.write_bytes(os.urandom(8 << 20))
    with FakeNgas(tmp_path / "ngas", streams=STOCK_STREAMS) as fake, \
            NgasClient(fake.url, retries=2, backoff=0.01) as client:
        with pytest.raises(NgasFailure) as err:
            client.archive(path, file_id="uid___evla_execblock_1_ASDM.xml", mime_type="text/xml",
                           label="TSKY.eb1/ASDM.xml")
        assert fake.pushes() == []  # not one byte of the file was sent
    message = err.value.message
    assert message.startswith("NGAS refused TSKY.eb1/ASDM.xml (NGAS file id uid___evla_execblock_1_ASDM.xml, "
                              "mime type text/xml): NGAMS_ER_UNKNOWN_MIME_TYPE2:4047:ERROR: Illegal mime-type: "
                              "text/xml")
    assert message.endswith('configure an NGAS Stream for mime type text/xml (e.g. PlugIn="ngamsGenDapi", see '
                            "docs/nrao.md)")
    assert err.value.ngas_message.startswith("NGAMS_ER_UNKNOWN_MIME_TYPE2")


@pytest.mark.parametrize("command", ["ARCHIVE", "QARCHIVE"])
def test_without_the_probe_the_refusal_still_names_file_and_mime(tmp_path: Path, command: str) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"p" * 2000)
    with FakeNgas(tmp_path / "ngas", streams=STOCK_STREAMS) as fake, \
            NgasClient(fake.url, preflight=False, archive_command=command) as client:
        with pytest.raises(NgasFailure, match=r"^NGAS refused products/x.png \(NGAS file id uid___x.png, mime type "
                                              r"image/png\): .*image/png.*configure an NGAS Stream"):
            client.archive(path, file_id="uid___x.png", label="products/x.png")


def test_stock_fits_plugin_wants_arcfile(tmp_path: Path) -> None:
    plain, eso = tmp_path / "a.fits", tmp_path / "b.fits"
    plain.write_bytes(fits_bytes())
    eso.write_bytes(fits_bytes("ARCFILE = 'TEST.2001-05-08T15:25:00.123.fits'"))
    with FakeNgas(tmp_path / "ngas", streams=STOCK_STREAMS) as fake, NgasClient(fake.url) as client:
        with pytest.raises(NgasFailure, match="image/x-fits.*NGAMS_ER_DAPI_BAD_FILE:4003:ERROR: .* ngamsFitsPlugIn, "
                                              "Error: Did not find keyword ARCFILE"):
            client.archive(plain, file_id="uid___evla_image_1.fits")
        assert client.archive(eso, file_id="uid___evla_image_2.fits").file_version == 1


def test_stock_tarball_plugin_wants_a_timestamp_in_the_file_id(tmp_path: Path) -> None:
    import tarfile

    path = tmp_path / "cal.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(__file__, arcname="x.py")
    with FakeNgas(tmp_path / "ngas", streams=STOCK_STREAMS) as fake, NgasClient(fake.url) as client:
        with pytest.raises(NgasFailure, match="application/x-tar.*not enough values to unpack"):
            client.archive(path, file_id="uid___evla_calibration_1")
        assert client.archive(path, file_id="CAL.2001-05-08T15:25:00.123").file_version == 1
    with FakeNgas(tmp_path / "ngas2") as fake, NgasClient(fake.url) as client:  # our Streams: the generic DAPI
        assert client.archive(path, file_id="uid___evla_calibration_1.tar").file_version == 1


def test_unknown_command_is_404(tmp_path: Path) -> None:
    with FakeNgas(tmp_path / "ngas") as fake, LocalNgas(tmp_path / "local") as local:
        for url in (fake.url, local.url):
            resp = httpx.get(f"{url}/NOSUCH", timeout=5)
            assert (resp.status_code, parse_status(resp.content, 404).message) == (404, "Command not found")


# ------------------------------------------------------------------ CHECKFILE, STATUS, unknown files


class Server:
    """The fake or our local archive, with a way to damage or lose a stored version."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.server = FakeNgas(root) if kind == "fake" else LocalNgas(root)

    def path(self, file_id: str, version: int) -> Path:
        if self.kind == "fake":
            return self.server.stored_path(file_id, version)
        return self.server.path(file_id, version)


@pytest.fixture(params=["fake", "local"])
def server(request, tmp_path: Path):
    s = Server(request.param, tmp_path / "ngas")
    with s.server:
        yield s


def test_checkfile_verdicts_as_ngas_12_gives_them(server: Server, tmp_path: Path) -> None:
    f = tmp_path / "f.tar"
    with NgasClient(server.server.url) as client:
        for content in (b"one" * 1000, b"two" * 1000, b"three" * 1000):
            f.write_bytes(content)
            client.archive(f, file_id="uid___x.tar")
        ok = client.check_file("uid___x.tar", 2)
        assert (ok.ok, ok.state, ok.status.http_status, ok.status.status) == (True, "ok", 200, "SUCCESS")
        assert ok.message.startswith("NGAMS_INFO_FILE_OK:4056:INFO: Checked file with File ID: uid___x.tar/File "
                                     "Version: 2/Disk ID: ")
        assert ok.message.endswith(" - file found to be consistent.")

        path = server.path("uid___x.tar", 1)
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
        bad = client.check_file("uid___x.tar", 1)
        # NGAS sends the inconsistency as the command's message: HTTP 200, Status="SUCCESS"
        assert (bad.ok, bad.state, bad.status.http_status, bad.status.status) == (False, "inconsistent", 200,
                                                                                   "SUCCESS")
        assert bad.message.startswith("NGAMS_ER_FILE_NOK:4057:ERROR: Checked file with File ID: uid___x.tar/File "
                                      "Version: 1/")
        assert bad.message.endswith("file found to be inconsistent. Descrepancy: ERROR: Inconsistent checksum found")
        # without a version NGAS checks version 1, not the latest
        assert client.checkfile("uid___x.tar").state == "inconsistent"
        assert client.check_file("uid___x.tar", 3).ok

        server.path("uid___x.tar", 3).unlink()
        gone = client.check_file("uid___x.tar", 3)
        assert gone.state == "inconsistent" and gone.message.endswith("ERROR: File in DB missing on disk")
        server.path("uid___x.tar", 2).write_bytes(b"short")
        short = client.check_file("uid___x.tar", 2)
        assert short.state == "inconsistent" and "ERROR: File has wrong size. Expected: 3000/Actual: 5." in \
            short.message

        for file_id, version, ref in (("nope.tar", 1, "nope.tar/Version: 1"), ("uid___x.tar", 9,
                                                                               "uid___x.tar/Version: 9")):
            missing = client.check_file(file_id, version)
            assert (missing.ok, missing.state, missing.status.http_status) == (False, "missing", 400)
            assert missing.message == f"NGAMS_ER_UNAVAIL_FILE:4019:ERROR: File with ID: {ref} appears not to be " \
                                      "available."
        resp = httpx.get(f"{server.server.url}/CHECKFILE", timeout=5)
        assert (resp.status_code, parse_status(resp.content, 400).message) == (
            400, "Must specify a File ID for the CHECKFILE command.")


def test_unknown_files_are_400_unavail_file(server: Server, tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 100)
    with NgasClient(server.server.url) as client:
        client.archive(f, file_id="known.bin")
        for call in (lambda: client.file_status("nope.bin"), lambda: client.file_status("known.bin", 2),
                     lambda: client.retrieve("nope.bin", tmp_path / "out")):
            with pytest.raises(NgasFileUnavailable, match="NGAMS_ER_UNAVAIL_FILE:4019:ERROR: File with ID: ") as err:
                call()
            assert err.value.http_status == 400
    assert not (tmp_path / "out").exists()


def test_the_client_reads_the_other_forms_too(tmp_path: Path) -> None:
    """A 404 for an unknown file and a FAILURE reply for an inconsistent one (other NGAS versions)."""
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 100)
    with FakeNgas(tmp_path / "ngas") as fake, NgasClient(fake.url) as client:
        client.archive(f, file_id="known.bin")
        unavail = "NGAMS_ER_UNAVAIL_FILE:4019:ERROR: File with ID: known.bin/Version: 1 appears not to be available."
        fake.fail_next(unavail, status=404, count=2, commands={"CHECKFILE", "STATUS"})
        assert client.check_file("known.bin", 1).state == "missing"
        with pytest.raises(NgasFileUnavailable) as err:
            client.file_status("known.bin")
        assert err.value.http_status == 404
        fake.fail_next("NGAMS_ER_FILE_NOK:4057:ERROR: Checked file ... - file found to be inconsistent",
                       commands={"CHECKFILE"})
        assert client.check_file("known.bin", 1).state == "inconsistent"
        assert client.check_file("known.bin", 1).state == "ok"


def test_archive_reports_the_legacy_crc_unsigned_and_local_names_it_like_ngas(tmp_path: Path) -> None:
    from test_nrao_ngas import high_bit_file

    path = high_bit_file(tmp_path / "hb.bin")
    with LocalNgas(tmp_path / "local") as local, NgasClient(local.url, crc_variant="crc32") as client:
        result = client.archive(path)
    assert result.checksum_plugin == "ngamsGenCrc32" and int(result.checksum) >= 1 << 31


def test_local_archive_removes_parts_a_killed_server_left_and_keeps_live_ones(tmp_path: Path) -> None:
    import fcntl

    tmp = tmp_path / "local" / ".tmp"
    tmp.mkdir(parents=True)
    (tmp / "dead.part").write_bytes(b"half an upload")
    with open(tmp / "live.part", "wb") as live:
        fcntl.flock(live.fileno(), fcntl.LOCK_EX)
        with LocalNgas(tmp_path / "local") as local:
            assert local.swept == ["dead.part"]
        assert sorted(p.name for p in tmp.iterdir()) == ["live.part"]
