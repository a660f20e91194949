"""A faithful fake NGAS server: real HTTP on 127.0.0.1, bodies stored on disk as a stream.

Shaped on ICRAR ngas 12 (``ngamsServer``; its ``ngamsLogDef.xml`` messages, word for word),
and as strict as the real server on every point the ingest touches:

- ``ARCHIVE`` / ``QARCHIVE`` push (POST or PUT, body = the file; ``filename`` from the query
  or ``Content-Disposition``; ``mime_type``, ``no_versioning``, ``crc_variant``). Re-archiving a
  file id makes version+1 (or replaces the latest with ``no_versioning=1``).
- **Streams.** Every mime type needs a configured Stream (``streams``: mime type → plug-in).
  Without one, ARCHIVE answers 400 ``NGAMS_ER_UNKNOWN_MIME_TYPE2`` and QARCHIVE 400
  ``Unknown mime type: …``, both before reading the body, and the connection is closed (NGAS
  speaks HTTP/1.0 and never drains a refused body). ``ARCHIVE?probe=1&mime_type=`` answers
  ``NGAMS_INFO_ARCH_REQ_OK`` for a configured type. The default ``NRAO_STREAMS`` is what
  docs/nrao.md tells operators to configure; ``STOCK_STREAMS`` is NGAS's shipped sample
  configuration, where ``image/x-fits`` goes to ``ngamsFitsPlugIn`` (refuses a FITS without
  ``ARCFILE``) and ``application/x-tar`` to ``ngasTarBallPlugIn`` (refuses a file id without an
  ISO timestamp after its first dot).
- **Checksums** are decimal strings. ARCHIVE reports the crc32 variant as the legacy plug-in
  ``ngamsGenCrc32``, QARCHIVE as ``crc32``; both **unsigned** (NGAS on Python 3), or signed
  with ``legacy_signed=True`` (NGAS on Python 2). ``crc32c``/``crc32z`` are always unsigned.
  With ``honour_crc_variant=False`` the ``crc_variant`` parameter is ignored, as before NGAS v10.
- ``RETRIEVE?file_id=&file_version=`` streams the file with ``Content-Disposition``.
- ``STATUS`` (server) and ``STATUS?file_id=`` (file). An unknown file id or version is HTTP
  **400** ``NGAMS_ER_UNAVAIL_FILE`` (not 404) on STATUS, RETRIEVE and CHECKFILE.
- ``CHECKFILE?file_id=&file_version=``: the version defaults to **1** (not the latest). A
  consistent file is HTTP 200 ``NGAMS_INFO_FILE_OK``; an inconsistent one (checksum, size, or
  missing on disk) is *also* HTTP 200 with ``Status="SUCCESS"``, its message
  ``NGAMS_ER_FILE_NOK`` naming the discrepancy; without ``file_id`` it is a 400.
- An unknown command is HTTP 404 ``Command not found``.

Fault switches: ``fail_next`` (HTTP 400 FAILURE with a message), ``unavailable_next``
(HTTP 503), ``redirect_next`` (303 to another node), ``corrupt_checksum_next`` (report a
wrong CRC), ``damage`` (flip a stored byte), ``lose`` (delete a stored file behind NGAS's back).
"""
from __future__ import annotations

import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import crc32c as _crc32c

NGAS_VERSION = "v12.0/2024-05-21T00:00:00"
BLOCK = 1 << 20
VARIANTS = ("ngamsGenCrc32", "crc32", "crc32c", "crc32z")
SLOT_ID = "volume1"
ARCHIVE_REQUEST_MT = "ngas/archive-request"

GEN_DAPI = "ngamsGenDapi"
FITS_PLUGIN = "ngamsFitsPlugIn"
TARBALL_PLUGIN = "ngasTarBallPlugIn"

# The Streams docs/nrao.md asks an operator to configure: every mime type the NRAO flow sends,
# each to the generic DAPI. Kept as a literal list on purpose: a new mime type in the flow must
# fail here until the docs (and so the operators) know about it.
NRAO_STREAMS: dict[str, str] = {mime: GEN_DAPI for mime in (
    "application/octet-stream", "application/json", "application/x-gfits", "application/x-gtar",
    "application/x-tar", "image/png", "image/x-fits", "multipart/related", "text/plain", "text/xml",
)}

# NGAS's shipped sample configuration (cfg/sample_server_config.xml, <Streams>).
STOCK_STREAMS: dict[str, str] = {
    "application/octet-stream": GEN_DAPI,
    "image/x-fits": FITS_PLUGIN,
    "cal/x-fits": "ngamsCalibDapi",
    "cal/x-tfits": "ngamsCalibDapi",
    "non/existing": "ngamsNonExisting",
    "application/x-cfits": FITS_PLUGIN,
    "application/x-gfits": FITS_PLUGIN,
    "ngas/nglog": "ngamsNgLogPlugIn",
    "text/ascii": GEN_DAPI,
    "text/log-file": "ngamsNgLogPlugIn",
    "application/x-tar": TARBALL_PLUGIN,
    "multialma/related": "ngamsSdmMultipart",
    "application/pdf": GEN_DAPI,
    "application/x-gtar": GEN_DAPI,
}


@dataclass
class StoredFile:
    file_id: str
    version: int
    relpath: str          # FileName: path on the volume
    size: int
    checksum: str
    plugin: str
    mime: str
    ingestion_date: str


@dataclass
class Fault:
    status: int
    message: str
    count: int
    commands: frozenset[str] | None
    location: str | None = None  # a redirect target (NGAS clusters redirect RETRIEVE to the node with the file)


@dataclass
class RequestRecord:
    method: str
    command: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def probe(self) -> bool:
        """``ARCHIVE?probe=1``: asks whether a mime type can be archived; sends no data."""
        return self.command == "ARCHIVE" and self.params.get("probe") not in (None, "", "0")

    @property
    def push(self) -> bool:
        return self.command in ("ARCHIVE", "QARCHIVE") and not self.probe


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def crc_value(variant: str, raw: int, legacy_signed: bool) -> str:
    """NGAS's decimal CRC: the zlib family is binascii.crc32 unmasked, so signed only on Python 2."""
    raw &= 0xFFFFFFFF
    if legacy_signed and variant in ("ngamsGenCrc32", "StreamCrc32", "crc32") and raw >= 1 << 31:
        raw -= 1 << 32
    return str(raw)


def checksum_name(variant: str, command: str) -> str:
    """The ChecksumPlugIn NGAS 12 records: crc32 for the zlib family, renamed for ARCHIVE."""
    name = "crc32" if variant in ("ngamsGenCrc32", "StreamCrc32", "crc32") else variant
    return "ngamsGenCrc32" if (command == "ARCHIVE" and name == "crc32") else name


def log_text(log_id: str, *pars: Any) -> str:
    """An ngamsLogDef.xml message: ``<id>:<number>:<type>: <text>``."""
    number, kind, text = LOG_DEFS[log_id]
    return f"{log_id}:{number}:{kind}: " + (text % pars if pars else text)


LOG_DEFS: dict[str, tuple[int, str, str]] = {
    "NGAMS_ER_UNAVAIL_FILE": (4019, "ERROR", "File with ID: %s appears not to be available."),
    "NGAMS_ER_UNKNOWN_MIME_TYPE1": (4014, "ERROR", "Could not determine mime-type for data file with URI: %s. "
                                                   "Check NG/AMS Configuration."),
    "NGAMS_ER_UNKNOWN_MIME_TYPE2": (4047, "ERROR", "Illegal mime-type: %s issued in Archive Request for file "
                                                   "with URI: %s. Rejecting request."),
    "NGAMS_INFO_ARCH_REQ_OK": (4068, "INFO", "Handling of Archive Request for mime-type: %s is possible on "
                                             "node: %s"),
    "NGAMS_ER_DAPI_BAD_FILE": (4003, "ERROR", "Error occurred handling file: %s in DAPI: %s, Error: %s"),
    "NGAMS_ER_MISSING_URI": (4020, "ERROR", "Missing URI/filename in Archive Request."),
    "NGAMS_INFO_FILE_OK": (4056, "INFO", "Checked file with File ID: %s/File Version: %d/Disk ID: %s/Slot ID: "
                                         "%s/ Host ID: %s - file found to be consistent."),
    "NGAMS_ER_FILE_NOK": (4057, "ERROR", "Checked file with File ID: %s/File Version: %d/Disk ID: %s/Slot ID: "
                                         "%s/ Host ID: %s - file found to be inconsistent%s"),
}


def fits_has_arcfile(path: Path) -> bool:
    """What ngamsFitsPlugIn needs: an ARCFILE card in the primary header (ESO's naming)."""
    with open(path, "rb") as fh:
        while True:
            block = fh.read(2880)
            if len(block) < 2880:
                return False
            for i in range(0, 2880, 80):
                key = block[i:i + 8].decode("ascii", "replace").strip()
                if key == "ARCFILE":
                    return True
                if key == "END":
                    return False


def tarball_timestamp_error(file_id: str) -> str | None:
    """ngasTarBallPlugIn reads an ISO timestamp after the file id's first dot (``X.2001-05-08T15:25:00.123``)."""
    stamp = file_id[file_id.find(".") + 1:]
    parts = stamp.split(".")
    if len(parts) != 2:
        return (f"not enough values to unpack (expected 2, got {len(parts)})" if len(parts) < 2
                else "too many values to unpack (expected 2)")
    try:
        time.strptime(parts[0], "%Y-%m-%dT%H:%M:%S")
        float(parts[1])
    except ValueError as exc:
        return str(exc)
    return None


class _Crc:
    def __init__(self, variant: str) -> None:
        self.fn = _crc32c.crc32c if variant == "crc32c" else zlib.crc32
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = self.fn(data, self.value)


class FakeNgas:
    def __init__(self, root: str | Path, *, crc_variant: str = "crc32", legacy_signed: bool = False,
                 honour_crc_variant: bool = True, host: str = "127.0.0.1", port: int = 0,
                 disk_id: str = "fake-ngas-volume1", streams: dict[str, str] | None = None) -> None:
        if crc_variant not in VARIANTS:
            raise ValueError(crc_variant)
        self.root = Path(root)
        self.volume = self.root / "volume1"
        (self.volume / ".tmp").mkdir(parents=True, exist_ok=True)
        self.crc_variant = crc_variant
        self.legacy_signed = legacy_signed
        self.honour_crc_variant = honour_crc_variant  # NGAS before v10 ignores ?crc_variant=
        self.disk_id = disk_id
        self.streams = dict(NRAO_STREAMS if streams is None else streams)  # mime type → DAPI plug-in
        self.files: dict[str, dict[int, StoredFile]] = {}
        self.requests: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._corrupt = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def host_id(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_id}"

    def start(self) -> "FakeNgas":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="fake-ngas", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> "FakeNgas":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ fault switches

    def fail_next(self, message: str, *, status: int = 400, count: int = 1, commands: set[str] | None = None) -> None:
        """The next ``count`` requests get ``Status="FAILURE"`` with ``message``."""
        with self._lock:
            self._faults.append(Fault(status, message, count, frozenset(commands) if commands else None))

    def unavailable_next(self, count: int = 1, *, status: int = 503, commands: set[str] | None = None) -> None:
        self.fail_next("NGAMS_ER_SERVER_BUSY:4013:ERROR: Server is busy; try again later",
                       status=status, count=count, commands=commands)

    def redirect_next(self, target_url: str, *, count: int = 1, commands: set[str] | None = None) -> None:
        """Answer ``303 See Other`` pointing at the same request on ``target_url`` (another node)."""
        with self._lock:
            self._faults.append(Fault(303, f"NGAMS_INFO_REDIRECT:4042:INFO: Redirection URL: {target_url}",
                                      count, frozenset(commands) if commands else None, target_url.rstrip("/")))

    def corrupt_checksum_next(self, count: int = 1) -> None:
        """The next ``count`` archives report a CRC that is not the one of the stored bytes."""
        with self._lock:
            self._corrupt += count

    def lose(self, file_id: str, version: int | None = None) -> None:
        """Delete a stored file behind NGAS's back (its database row stays)."""
        self.stored_path(file_id, version).unlink()

    def damage(self, file_id: str, version: int | None = None) -> None:
        """Flip one stored byte (behind NGAS's back) so CHECKFILE has something to find."""
        path = self.stored_path(file_id, version)
        with open(path, "r+b") as fh:
            b = fh.read(1)
            fh.seek(0)
            fh.write(bytes([(b[0] if b else 0) ^ 0xFF]))

    # ------------------------------------------------------------ introspection

    def versions(self, file_id: str) -> list[int]:
        with self._lock:
            return sorted(self.files.get(file_id, {}))

    def record(self, file_id: str, version: int | None = None) -> StoredFile | None:
        with self._lock:
            versions = self.files.get(file_id)
            if not versions:
                return None
            return versions.get(version if version is not None else max(versions))

    def stored_path(self, file_id: str, version: int | None = None) -> Path:
        rec = self.record(file_id, version)
        if rec is None:
            raise KeyError(file_id)
        return self.volume / rec.relpath

    def pushes(self) -> list[RequestRecord]:
        """The ARCHIVE/QARCHIVE requests that carried a file (probes left out)."""
        return [r for r in self.requests if r.push]

    def _take_fault(self, command: str) -> Fault | None:
        """Faults hit the next matching request; a probe only when ``commands`` names ``PROBE``."""
        with self._lock:
            for fault in self._faults:
                if (fault.commands is None and command != "PROBE") or (fault.commands and command in fault.commands):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _take_corrupt(self) -> bool:
        with self._lock:
            if self._corrupt > 0:
                self._corrupt -= 1
                return True
        return False

    def _register(self, file_id: str, tmp: Path, size: int, raw_crc: int, variant: str, mime: str,
                  no_versioning: bool, command: str = "ARCHIVE") -> StoredFile:
        with self._lock:
            versions = self.files.setdefault(file_id, {})
            latest = max(versions) if versions else 0
            version = latest if (no_versioning and latest) else latest + 1
            date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
            relpath = f"{date}/{version}/{file_id}"
            final = self.volume / relpath
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            rec = StoredFile(file_id, version, relpath, size, crc_value(variant, raw_crc, self.legacy_signed),
                             checksum_name(variant, command), mime, _now())
            versions[version] = rec
            return rec


# ---------------------------------------------------------------- XML


def status_xml(fake: FakeNgas, status: str, message: str, files: list[StoredFile] = ()) -> bytes:
    root = ET.Element("NgamsStatus")
    ET.SubElement(root, "Status", {
        "Date": _now(), "HostId": fake.host_id, "Message": message, "State": "ONLINE",
        "Status": status, "SubState": "IDLE" if status == "SUCCESS" else "BUSY", "Version": NGAS_VERSION,
    })
    if files:
        with fake._lock:
            count = sum(len(v) for v in fake.files.values())
            stored = sum(r.size for v in fake.files.values() for r in v.values())
        disk = ET.SubElement(root, "DiskStatus", {
            "Archive": "FAKE-NGAS", "AvailableMb": "100000", "BytesStored": str(stored), "Checksum": "",
            "Completed": "0", "CompletionDate": "", "DiskId": fake.disk_id, "HostId": fake.host_id,
            "InstallationDate": "2020-01-01T00:00:00.000", "LastCheck": "", "LogicalName": "FAKE-M-000001",
            "Manufacturer": "Unknown", "MountPoint": str(fake.volume), "Mounted": "1",
            "NumberOfFiles": str(count), "SlotId": "1", "TotalDiskWriteTime": "0.0", "Type": "MAGNETIC DISK",
        })
        for rec in files:
            ET.SubElement(disk, "FileStatus", {
                "Checksum": rec.checksum, "ChecksumPlugIn": rec.plugin, "Compression": "",
                "CreationDate": rec.ingestion_date, "FileId": rec.file_id, "FileName": rec.relpath,
                "FileSize": str(rec.size), "FileStatus": "00000000", "FileVersion": str(rec.version),
                "Format": rec.mime, "Ignore": "0", "IngestionDate": rec.ingestion_date,
                "UncompressedFileSize": str(rec.size),
            })
    doctype = f'<!DOCTYPE NgamsStatus SYSTEM "{fake.url}/RETRIEVE?internal=ngamsStatus.dtd">\n'
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n' + doctype.encode()
            + ET.tostring(root, encoding="utf-8") + b"\n")


# ---------------------------------------------------------------- handler

_DISP_RE = re.compile(r'filename\s*=\s*"?([^";]+)"?', re.IGNORECASE)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "NGAMS/" + NGAS_VERSION

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, delayed ACK costs 40 ms a reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def fake(self) -> FakeNgas:
        return self.server.fake  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        command = url.path.strip("/").upper()
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        record = RequestRecord(self.command, command, params, dict(self.headers.items()))
        self.fake.requests.append(record)
        fault = self.fake._take_fault("PROBE" if record.probe else command)
        if fault is not None:
            self._drain()
            if fault.location:
                return self._reply(fault.status, "SUCCESS", fault.message,
                                   headers={"Location": fault.location + self.path})
            return self._reply(fault.status, "FAILURE", fault.message)
        handler = {"ARCHIVE": self._archive, "QARCHIVE": self._archive, "RETRIEVE": self._retrieve,
                   "STATUS": self._status, "CHECKFILE": self._checkfile}.get(command)
        if handler is None:
            self._drain()
            return self._reply(404, "FAILURE", "Command not found")
        try:
            handler(params)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ------------------------------------------------------------ replies

    def _reply(self, code: int, status: str, message: str, files: list[StoredFile] = (),
               headers: dict[str, str] | None = None) -> None:
        body = status_xml(self.fake, status, message, list(files))
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drain(self) -> None:
        """Consume a request body we will not use, so the client can read our reply."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            for _ in self._chunks():
                pass
        elif length:
            left = int(length)
            while left:
                got = self.rfile.read(min(BLOCK, left))
                if not got:
                    self.close_connection = True
                    return
                left -= len(got)

    def _chunks(self):
        while True:
            line = self.rfile.readline(1024)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return
            left = size
            while left:
                got = self.rfile.read(min(BLOCK, left))
                if not got:
                    raise ConnectionResetError("client went away mid-chunk")
                left -= len(got)
                yield got
            self.rfile.readline(16)

    # ------------------------------------------------------------ commands

    def _mime_type(self, params: dict[str, str]) -> str:
        """As ngamsReqProps reads it: Content-Type, else Content-Disposition's mime_type; the query wins."""
        mime = (self.headers.get("Content-Type") or "").split(";")[0].strip(' "')
        if not mime:
            m = re.search(r'mime_type\s*=\s*"?([^";]+)"?', self.headers.get("Content-Disposition", ""))
            mime = m.group(1).strip() if m else ""
        return params.get("mime_type") or mime

    def _refuse_unread(self, code: int, message: str) -> None:
        """NGAS refuses before reading the body and closes the connection (HTTP/1.0): nothing is drained."""
        self.close_connection = True
        self._reply(code, "FAILURE", message, headers={"Connection": "close"})

    def _archive(self, params: dict[str, str]) -> None:
        fake = self.fake
        command = urllib.parse.urlsplit(self.path).path.strip("/").upper()
        file_uri = params.get("filename") or ""
        if not file_uri:
            m = _DISP_RE.search(self.headers.get("Content-Disposition", ""))
            file_uri = os.path.basename(m.group(1).strip()) if m else ""
        mime = self._mime_type(params)
        if command == "ARCHIVE" and mime in ("", ARCHIVE_REQUEST_MT):
            return self._refuse_unread(400, log_text("NGAMS_ER_UNKNOWN_MIME_TYPE1", file_uri))
        if mime not in fake.streams:
            if command == "ARCHIVE":
                return self._refuse_unread(400, log_text("NGAMS_ER_UNKNOWN_MIME_TYPE2", mime, file_uri))
            return self._refuse_unread(400, f"Unknown mime type: {mime}")
        if command == "ARCHIVE" and params.get("probe") not in (None, "", "0"):
            self._drain()
            return self._reply(200, "SUCCESS", log_text("NGAMS_INFO_ARCH_REQ_OK", mime, fake.host_id))
        if self.command not in ("POST", "PUT"):
            return self._reply(400, "FAILURE", "NGAMS_ER_ARCHIVE_PULL_REQ:4002:ERROR: Archive Pull is not "
                                               "supported by this server; push the data in the request body")
        file_id = os.path.basename(file_uri.strip())
        if not file_id:
            return self._refuse_unread(400, log_text("NGAMS_ER_MISSING_URI"))
        variant = (params.get("crc_variant") if fake.honour_crc_variant else None) or fake.crc_variant
        if variant not in VARIANTS:
            self._drain()
            return self._reply(400, "FAILURE", f"invalid literal for int() with base 10: {variant!r}")
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        length = self.headers.get("Content-Length")
        if not chunked and length is None:
            self.close_connection = True
            return self._reply(411, "FAILURE", "Content-Length is 0 or unknown")

        tmp = fake.volume / ".tmp" / f"{uuid.uuid4().hex}.part"
        crc = _Crc(variant)
        size = 0
        try:
            with open(tmp, "wb") as out:
                if chunked:
                    for chunk in self._chunks():
                        crc.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                else:
                    expected = int(length)
                    buf = bytearray(min(BLOCK, max(expected, 1)))
                    view = memoryview(buf)
                    while size < expected:
                        n = self.rfile.readinto(view[: min(len(buf), expected - size)])
                        if not n:
                            raise ConnectionResetError(f"client sent {size} of {expected} bytes")
                        crc.update(view[:n])
                        out.write(view[:n])
                        size += n
            problem = self._plugin_problem(fake.streams[mime], tmp, file_id)
            if problem:
                tmp.unlink(missing_ok=True)
                return self._reply(400, "FAILURE", problem)
            no_versioning = params.get("no_versioning", "0") in ("1", "true", "True") or \
                "no_versioning=1" in self.headers.get("Content-Disposition", "")
            rec = fake._register(file_id, tmp, size, crc.value, variant, mime, no_versioning, command)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self.close_connection = True
            raise
        if fake._take_corrupt():
            rec = StoredFile(**{**rec.__dict__, "checksum": crc_value(variant, crc.value ^ 0x1, fake.legacy_signed)})
        self._reply(200, "SUCCESS", f"Successfully handled Archive Push Request for data file with URI: {file_id}",
                    [rec])

    def _plugin_problem(self, plugin: str, staged: Path, file_id: str) -> str | None:
        """What the Stream's DAPI says about the received file (None: it accepts it)."""
        if plugin == FITS_PLUGIN and not fits_has_arcfile(staged):
            return log_text("NGAMS_ER_DAPI_BAD_FILE", file_id, FITS_PLUGIN,
                            "Did not find keyword ARCFILE in FITS file or ARCFILE illegal")
        if plugin == TARBALL_PLUGIN:
            import tarfile

            if not tarfile.is_tarfile(staged):
                return log_text("NGAMS_ER_DAPI_BAD_FILE", str(staged), TARBALL_PLUGIN,
                                "Error checking tarball: tar: This does not look like a tar archive")
            return tarball_timestamp_error(file_id)
        return None

    def _find(self, params: dict[str, str], default_version: int | None = None) -> StoredFile | None:
        file_id = params.get("file_id", "")
        version = params.get("file_version")
        try:
            v = int(version) if version not in (None, "", "-1") else default_version
        except ValueError:
            v = -999
        return self.fake.record(file_id, v)

    def _unavailable(self, params: dict[str, str], version: int | None = None) -> None:
        """NGAMS_ER_UNAVAIL_FILE, as HTTP 400 (NGAS answers every failed command 400)."""
        ref = params.get("file_id", "")
        v = version if version is not None else params.get("file_version")
        if v not in (None, "") and int(v) > 0:
            ref += f"/Version: {int(v)}"
        if params.get("disk_id"):
            ref += f"/Disk ID: {params['disk_id']}"
        self._reply(400, "FAILURE", log_text("NGAMS_ER_UNAVAIL_FILE", ref))

    def _retrieve(self, params: dict[str, str]) -> None:
        if "internal" in params:
            return self._reply(400, "FAILURE", log_text("NGAMS_ER_UNAVAIL_FILE", params["internal"]))
        rec = self._find(params)
        if rec is None:
            return self._unavailable(params)
        path = self.fake.volume / rec.relpath
        self.send_response(200)
        self.send_header("Content-Type", rec.mime)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Content-Disposition", f'attachment; filename="{rec.file_id}"')
        self.end_headers()
        with open(path, "rb") as fh:
            try:
                self.connection.sendfile(fh)
            except (AttributeError, OSError):
                fh.seek(0)
                while chunk := fh.read(BLOCK):
                    self.wfile.write(chunk)

    def _status(self, params: dict[str, str]) -> None:
        if "file_id" not in params:
            return self._reply(200, "SUCCESS", "Successfully handled command STATUS")
        rec = self._find(params)
        if rec is None:
            return self._unavailable(params)
        self._reply(200, "SUCCESS", "Successfully handled command STATUS", [rec])

    def _checkfile(self, params: dict[str, str]) -> None:
        fake = self.fake
        if not params.get("file_id"):
            return self._reply(400, "FAILURE", "Must specify a File ID for the CHECKFILE command.")
        version = int(params["file_version"]) if params.get("file_version") else 1  # NGAS: 1, not the latest
        rec = self._find(params, default_version=1)
        if rec is None or (params.get("disk_id") and params["disk_id"] != fake.disk_id):
            return self._unavailable(params, version)
        path = fake.volume / rec.relpath
        where = (rec.file_id, rec.version, fake.disk_id, SLOT_ID, fake.host_id)
        if not path.exists():
            problem = "ERROR: File in DB missing on disk"
        elif path.stat().st_size != rec.size:
            problem = f"ERROR: File has wrong size. Expected: {rec.size}/Actual: {path.stat().st_size}."
        else:
            crc = _Crc(rec.plugin)
            with open(path, "rb") as fh:
                while chunk := fh.read(BLOCK):
                    crc.update(chunk)
            stored, found = int(rec.checksum), crc.value
            problem = None if (stored & 0xFFFFFFFF) == (found & 0xFFFFFFFF) else "ERROR: Inconsistent checksum found"
        if problem is None:
            return self._reply(200, "SUCCESS", log_text("NGAMS_INFO_FILE_OK", *where))
        # NGAS returns the inconsistency as the command's message: HTTP 200, Status="SUCCESS".
        self._reply(200, "SUCCESS", log_text("NGAMS_ER_FILE_NOK", *where, f". Descrepancy: {problem}"))


def wait_until_up(url: str, timeout: float = 5.0) -> None:
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), 0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(url)
