"""A minimal NGAS-compatible archive on loopback, for machines that have no NGAS (demo, first runs).

It speaks the subset of NGAS's HTTP protocol the ingest uses, so the flow runs the
very same ``NgasClient`` code path against it as against a real NGAS:

- ``ARCHIVE`` / ``QARCHIVE`` push (POST or PUT with a ``Content-Length`` body; the file id
  from ``filename=`` or ``Content-Disposition``; ``crc_variant`` crc32, crc32c or crc32z).
  The body is written to disk as a stream while its CRC is computed; re-archiving a file
  id makes version+1.
- ``RETRIEVE?file_id=&file_version=`` streams a stored version back.
- ``STATUS`` (server, or ``file_id=`` for one file) and ``CHECKFILE`` (recompute the CRC).
- ``ARCHIVE?probe=1&mime_type=`` answers that the type can be archived: this archive stands
  for an NGAS with the Streams docs/nrao.md lists, so it takes every mime type.

Where NGAS 12 has a convention, this follows it: an unknown file id or version is HTTP 400
``NGAMS_ER_UNAVAIL_FILE``; CHECKFILE without ``file_version`` checks version 1 and reports an
inconsistent file as HTTP 200 ``Status="SUCCESS"`` with an ``NGAMS_ER_FILE_NOK`` message; ARCHIVE
names the crc32 variant ``ngamsGenCrc32`` (unsigned); an unknown command is 404.

Every reply is an ``NgamsStatus`` document. State is only on disk, as
``<root>/<file id>/<version>`` plus ``<version>.json`` (checksum, plug-in, mime type,
date), so versions survive a restart and two processes serving one root agree:
versions are allocated under an exclusive ``flock`` on ``<root>/.lock``. An upload in flight holds
an ``flock`` on its ``.tmp/*.part`` file; a part nobody holds (a killed server's) is removed when
the next server starts on the root.

This is not a replacement for NGAS (no disks, no clusters, no subscriptions); a
production NgasBlock names a real server's URL. The tests' fault-injecting fake is
``tests/nrao/fake_ngas.py``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import crc32c as _crc32c

from tasks.checksum import BLOCK_SIZE

VERSION = "archive-ingest-local-ngas/1"
DEFAULT_VARIANT = "crc32c"
VARIANTS = ("crc32", "crc32c", "crc32z")
_DISPOSITION_RE = re.compile(r'filename\s*=\s*"?([^";]+)"?', re.IGNORECASE)
_ID_RE = re.compile(r"^[A-Za-z0-9._+-]{1,1024}$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _crc_fn(variant: str):
    return _crc32c.crc32c if variant == "crc32c" else zlib.crc32


class LocalNgas:
    """Serve ``root`` on 127.0.0.1 (a free port unless given) from a daemon thread."""

    def __init__(self, root: str | Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        self.swept = sweep_parts(self.root / ".tmp")
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._server.archive = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalNgas":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="local-ngas", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> "LocalNgas":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ storage

    def versions(self, file_id: str) -> list[int]:
        d = self.root / file_id
        if not _ID_RE.match(file_id) or file_id in (".", "..") or not d.is_dir():
            return []
        return sorted(int(p.stem) for p in d.glob("*.json") if p.stem.isdigit())

    def record(self, file_id: str, version: int | None = None) -> dict[str, Any] | None:
        versions = self.versions(file_id)
        if not versions:
            return None
        v = versions[-1] if version is None else version
        meta = self.root / file_id / f"{v}.json"
        return json.loads(meta.read_text()) if meta.is_file() else None

    def path(self, file_id: str, version: int) -> Path:
        return self.root / file_id / str(version)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def store(self, file_id: str, tmp: Path, size: int, checksum: str, variant: str, mime: str) -> dict[str, Any]:
        with self._locked():
            versions = self.versions(file_id)
            version = (versions[-1] if versions else 0) + 1
            (self.root / file_id).mkdir(exist_ok=True)
            os.replace(tmp, self.path(file_id, version))
            record = {"file_id": file_id, "version": version, "size": size, "checksum": checksum,
                      "plugin": variant, "mime": mime, "ingestion_date": _now(),
                      "filename": f"{file_id}/{version}"}
            meta_tmp = self.root / ".tmp" / f"{uuid.uuid4().hex}.json"
            meta_tmp.write_text(json.dumps(record))
            os.replace(meta_tmp, self.root / file_id / f"{version}.json")  # the version exists from here on
        return record


def sweep_parts(tmp_dir: Path) -> list[str]:
    """Remove uploads a killed server left in ``.tmp``; a part whose writer lives is locked and kept."""
    removed = []
    for part in tmp_dir.glob("*.part"):
        try:
            fd = os.open(part, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # another process is writing it
        try:
            part.unlink(missing_ok=True)
            removed.append(part.name)
        finally:
            os.close(fd)
    return removed


def checksum_name(variant: str, command: str) -> str:
    """As NGAS 12 records it: ARCHIVE names zlib's crc32 after the legacy plug-in."""
    return "ngamsGenCrc32" if (command == "ARCHIVE" and variant == "crc32") else variant


def status_xml(archive: LocalNgas, status: str, message: str, files: list[dict[str, Any]] = ()) -> bytes:
    root = ET.Element("NgamsStatus")
    ET.SubElement(root, "Status", {"Date": _now(), "HostId": archive.url.removeprefix("http://"),
                                   "Message": message, "State": "ONLINE", "Status": status,
                                   "SubState": "IDLE", "Version": VERSION})
    if files:
        disk = ET.SubElement(root, "DiskStatus", {"DiskId": "local-ngas", "MountPoint": str(archive.root)})
        for r in files:
            ET.SubElement(disk, "FileStatus", {
                "FileId": r["file_id"], "FileVersion": str(r["version"]), "FileSize": str(r["size"]),
                "Checksum": r["checksum"], "ChecksumPlugIn": r["plugin"], "FileName": r["filename"],
                "Format": r["mime"], "IngestionDate": r["ingestion_date"], "FileStatus": "00000000"})
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "NGAMS/" + VERSION

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def archive(self) -> LocalNgas:
        return self.server.archive  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_GET

    def _dispatch(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        command = url.path.strip("/").upper()
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        handler = {"ARCHIVE": self._archive, "QARCHIVE": self._archive, "RETRIEVE": self._retrieve,
                   "STATUS": self._status, "CHECKFILE": self._checkfile}.get(command)
        if handler is None:
            self._drain()
            return self._reply(404, "FAILURE", "Command not found")
        try:
            handler(params)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _reply(self, code: int, status: str, message: str, files: list[dict[str, Any]] = ()) -> None:
        body = status_xml(self.archive, status, message, list(files))
        self.send_response(code)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drain(self) -> None:
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            got = self.rfile.read(min(BLOCK_SIZE, left))
            if not got:
                self.close_connection = True
                return
            left -= len(got)

    def _archive(self, params: dict[str, str]) -> None:
        command = urllib.parse.urlsplit(self.path).path.strip("/").upper()
        if command == "ARCHIVE" and params.get("probe") not in (None, "", "0"):
            self._drain()
            mime = params.get("mime_type") or "application/octet-stream"
            host = self.archive.url.removeprefix("http://")
            return self._reply(200, "SUCCESS", "NGAMS_INFO_ARCH_REQ_OK:4068:INFO: Handling of Archive Request for "
                                               f"mime-type: {mime} is possible on node: {host}")
        if self.command not in ("POST", "PUT"):
            return self._reply(400, "FAILURE", "NGAMS_ER_ARCHIVE_PULL_REQ:4002:ERROR: push the data in the body")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            return self._reply(411, "FAILURE", "NGAMS_ER_ARCHIVE_PUSH_REQ:4011:ERROR: Content-Length is required")
        name = params.get("filename") or ""
        if not name:
            m = _DISPOSITION_RE.search(self.headers.get("Content-Disposition", ""))
            name = m.group(1) if m else ""
        file_id = name.strip()
        variant = params.get("crc_variant") or DEFAULT_VARIANT
        problem = None
        if not _ID_RE.match(file_id) or file_id in (".", ".."):
            problem = f"NGAMS_ER_MISSING_URI:4020:ERROR: illegal or missing file id {file_id!r}"
        elif variant not in VARIANTS:
            problem = f"NGAMS_ER_ARCHIVE_PUSH_REQ:4011:ERROR: Unknown CRC variant: {variant!r}"
        if problem:
            self._drain()
            return self._reply(400, "FAILURE", problem)
        mime = params.get("mime_type") or self.headers.get("Content-Type") or "application/octet-stream"
        expected = int(length)
        tmp = self.archive.root / ".tmp" / f"{uuid.uuid4().hex}.part"
        crc_fn, crc, size = _crc_fn(variant), 0, 0
        buf = bytearray(min(BLOCK_SIZE, max(expected, 1)))
        view = memoryview(buf)
        try:
            with open(tmp, "wb") as out:
                fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # in flight: a starting server's sweep keeps it
                while size < expected:
                    n = self.rfile.readinto(view[: min(len(buf), expected - size)])
                    if not n:
                        raise ConnectionResetError(f"client sent {size} of {expected} bytes")
                    crc = crc_fn(view[:n], crc)
                    out.write(view[:n])
                    size += n
                out.flush()
                os.fsync(out.fileno())
            record = self.archive.store(file_id, tmp, size, str(crc & 0xFFFFFFFF),
                                        checksum_name(variant, command), mime)
        except BaseException:
            tmp.unlink(missing_ok=True)
            self.close_connection = True
            raise
        self._reply(200, "SUCCESS", f"Successfully handled Archive Push Request for data file with URI: {file_id}",
                    [record])

    def _find(self, params: dict[str, str], default_version: int | None = None) -> dict[str, Any] | None:
        version = params.get("file_version")
        try:
            v = int(version) if version not in (None, "", "-1") else default_version
        except ValueError:
            return None
        return self.archive.record(params.get("file_id", ""), v)

    def _unavailable(self, params: dict[str, str], version: int | None = None) -> None:
        ref = params.get("file_id", "")
        v = version if version is not None else params.get("file_version")
        if v not in (None, "") and str(v).lstrip("-").isdigit() and int(v) > 0:
            ref += f"/Version: {int(v)}"
        self._reply(400, "FAILURE", f"NGAMS_ER_UNAVAIL_FILE:4019:ERROR: File with ID: {ref} appears not to be "
                                    "available.")

    def _retrieve(self, params: dict[str, str]) -> None:
        record = self._find(params)
        if record is None:
            return self._unavailable(params)
        path = self.archive.path(record["file_id"], record["version"])
        self.send_response(200)
        self.send_header("Content-Type", record["mime"])
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Content-Disposition", f'attachment; filename="{record["file_id"]}"')
        self.end_headers()
        with open(path, "rb") as fh:
            self.connection.sendfile(fh)

    def _status(self, params: dict[str, str]) -> None:
        if "file_id" not in params:
            return self._reply(200, "SUCCESS", "Successfully handled command STATUS")
        record = self._find(params)
        if record is None:
            return self._unavailable(params)
        self._reply(200, "SUCCESS", "Successfully handled command STATUS", [record])

    def _checkfile(self, params: dict[str, str]) -> None:
        if not params.get("file_id"):
            return self._reply(400, "FAILURE", "Must specify a File ID for the CHECKFILE command.")
        record = self._find(params, default_version=1)  # NGAS checks version 1 unless told otherwise
        if record is None:
            return self._unavailable(params, int(params.get("file_version") or 1))
        path = self.archive.path(record["file_id"], record["version"])
        where = (f"File ID: {record['file_id']}/File Version: {record['version']}/Disk ID: local-ngas/"
                 f"Slot ID: local/ Host ID: {self.archive.url.removeprefix('http://')}")
        problem = None
        if not path.is_file():
            problem = "ERROR: File in DB missing on disk"
        elif path.stat().st_size != record["size"]:
            problem = f"ERROR: File has wrong size. Expected: {record['size']}/Actual: {path.stat().st_size}."
        else:
            crc_fn, crc = _crc_fn(record["plugin"]), 0
            with open(path, "rb") as fh:
                while chunk := fh.read(BLOCK_SIZE):
                    crc = crc_fn(chunk, crc)
            if (int(record["checksum"]) & 0xFFFFFFFF) != (crc & 0xFFFFFFFF):
                problem = "ERROR: Inconsistent checksum found"
        if problem is None:
            return self._reply(200, "SUCCESS", f"NGAMS_INFO_FILE_OK:4056:INFO: Checked file with {where} - file "
                                               "found to be consistent.")
        self._reply(200, "SUCCESS", f"NGAMS_ER_FILE_NOK:4057:ERROR: Checked file with {where} - file found to be "
                                    f"inconsistent. Descrepancy: {problem}")


_RUNNING: dict[Path, LocalNgas] = {}
_RUNNING_LOCK = threading.Lock()


def serve(root: str | Path) -> LocalNgas:
    """The process's local NGAS for ``root``, started on first use and kept until the process exits."""
    key = Path(root).resolve()
    with _RUNNING_LOCK:
        server = _RUNNING.get(key)
        if server is None:
            server = _RUNNING[key] = LocalNgas(key).start()
        return server
