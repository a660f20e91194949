"""NGAS client: push files (ARCHIVE/QARCHIVE), read them back (RETRIEVE), ask STATUS and CHECKFILE.

Speaks NGAS's HTTP protocol the way ngamsPClient does: the raw file is the POST
body (``Content-Type`` = mime type, ``Content-Disposition: attachment;
filename="<id>"``, a real ``Content-Length``), parameters in the query string, and
every reply an ``NgamsStatus`` XML document. The body is streamed from disk and
every requested digest is computed in that same pass, so memory stays flat and
the CRC NGAS reports is checked against bytes we actually sent.

Error policy (see docs/nrao.md):
- ``NgasFailure`` (a UserError): NGAS answered ``Status="FAILURE"`` (HTTP 4xx). Not retried.
  A refused push names the file, its NGAS id and its mime type; a mime type with no NGAS
  Stream is found by a probe before any byte is sent. ``NgasFileUnavailable`` (a
  NgasFailure) is ``NGAMS_ER_UNAVAIL_FILE``, whether NGAS sent it as 400 (NGAS 12) or 404.
- ``NgasUnavailable``: 5xx, connection or timeout errors, after ``retries`` attempts with
  exponential backoff. Transient: the flow may retry later.
- ``NgasChecksumMismatch``: NGAS stored something other than what we sent. Transient
  (a re-archive makes a new version); the caller must record nothing for the file.
"""
from __future__ import annotations

import os
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from flows.nrao.products import mime_type_for
from tasks.checksum import BLOCK_SIZE, MultiHasher, hash_file
from tasks.errors import UserError
from tasks.staging import check_relative_name

ARCHIVE = "ARCHIVE"
QARCHIVE = "QARCHIVE"
MAX_REPLY_BYTES = 16 << 20  # an NgamsStatus document is small; never buffer a runaway body
TRANSIENT_HTTP = frozenset({500, 502, 503, 504})

# NGAS checksum plug-in / variant name → the digest we compute for it. crc32z is
# zlib's CRC-32 like crc32; the legacy names (ngamsGenCrc32, StreamCrc32, crc32) are
# NGAS's unmasked binascii.crc32: unsigned on Python 3 (NGAS 12), SIGNED on Python 2,
# so those values compare modulo 2**32.
CRC_PLUGINS: dict[str, str] = {
    "ngamsGenCrc32": "crc32",
    "StreamCrc32": "crc32",
    "crc32": "crc32",
    "crc32z": "crc32",
    "crc32c": "crc32c",
}
REQUESTABLE_VARIANTS = ("crc32", "crc32c", "crc32z")


# ---------------------------------------------------------------- errors


class NgasError(Exception):
    """Anything that went wrong talking to NGAS; transient unless it is also a UserError."""

    def __init__(self, message: str, *, http_status: int | None = None, status: "NgasStatus | None" = None) -> None:
        super().__init__(message)
        self.message = message
        self.ngas_message = message  # NGAS's own words, before we add which file it was about
        self.http_status = http_status
        self.status = status


class NgasFailure(NgasError, UserError):
    """NGAS refused the request (``Status="FAILURE"``); its message is passed on verbatim."""

    def __init__(self, message: str, *, http_status: int | None = None, status: "NgasStatus | None" = None) -> None:
        NgasError.__init__(self, message, http_status=http_status, status=status)
        self.code = "ngas_failure"


class NgasFileUnavailable(NgasFailure):
    """``NGAMS_ER_UNAVAIL_FILE``: NGAS holds no such file id (or version)."""


class NgasUnavailable(NgasError):
    """NGAS could not be reached or answered 5xx on every attempt."""


class NgasChecksumMismatch(NgasError):
    """The size or CRC NGAS reports differs from what we streamed."""


# ---------------------------------------------------------------- checksums


def crc_algorithm(plugin: str) -> str:
    try:
        return CRC_PLUGINS[plugin]
    except KeyError:
        raise NgasError(f"NGAS used checksum plug-in {plugin!r}, which we cannot verify") from None


def crc_to_ngas(plugin: str, hexdigest: str, *, signed: bool = False) -> str:
    """Our 8-hex CRC as NGAS writes it: unsigned decimal (NGAS 12 on Python 3); ``signed=True``
    gives what an NGAS on Python 2 wrote for the legacy zlib names (ngamsGenCrc32, crc32)."""
    value = int(hexdigest, 16)
    if signed and CRC_PLUGINS.get(plugin) == "crc32" and plugin != "crc32z" and value >= 1 << 31:
        value -= 1 << 32
    return str(value)


def crc_matches(plugin: str, reported: str, hexdigest: str) -> bool:
    try:
        value = int(str(reported).strip())
    except ValueError:
        return False
    mine = int(hexdigest, 16)
    if CRC_PLUGINS.get(plugin) == "crc32" and plugin != "crc32z":
        return (value & 0xFFFFFFFF) == mine  # signed or unsigned, depending on the NGAS's Python
    return value == mine


# ---------------------------------------------------------------- NgamsStatus


@dataclass(frozen=True)
class NgasFileStatus:
    file_id: str
    file_version: int
    file_size: int
    checksum: str | None
    checksum_plugin: str | None
    filename: str | None = None
    format: str | None = None
    disk_id: str | None = None
    ingestion_date: str | None = None
    file_status: str | None = None


@dataclass(frozen=True)
class NgasStatus:
    http_status: int
    status: str
    message: str
    state: str | None = None
    substate: str | None = None
    host_id: str | None = None
    date: str | None = None
    version: str | None = None
    files: tuple[NgasFileStatus, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "SUCCESS"


def parse_status(body: bytes | str, http_status: int = 200) -> NgasStatus:
    """Parse an NgamsStatus document; a body that is not one becomes a FAILURE with its text."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        text = re.sub(r"<[^>]+>", " ", text)
        return NgasStatus(http_status, "FAILURE", " ".join(text.split())[:500] or f"HTTP {http_status}")
    if root.tag != "NgamsStatus":  # e.g. a proxy's XHTML error page
        text = " ".join(" ".join(root.itertext()).split())[:500]
        return NgasStatus(http_status, "FAILURE", text or f"unexpected reply element <{root.tag}>")
    st = root.find("Status")
    a = st.attrib if st is not None else {}
    files = []
    for disk in root.iter("DiskStatus"):
        for f in disk.iter("FileStatus"):
            files.append(_file_status(f.attrib, disk.attrib.get("DiskId")))
    for flist in root.iter("FileList"):
        for f in flist.iter("FileStatus"):
            files.append(_file_status(f.attrib, f.attrib.get("DiskId")))
    return NgasStatus(
        http_status=http_status, status=a.get("Status", "FAILURE" if http_status >= 400 else "SUCCESS"),
        message=a.get("Message", ""), state=a.get("State"), substate=a.get("SubState"), host_id=a.get("HostId"),
        date=a.get("Date"), version=a.get("Version"), files=tuple(files))


def _file_status(a: dict[str, str], disk_id: str | None) -> NgasFileStatus:
    def _int(key: str) -> int:
        try:
            return int(a.get(key) or 0)
        except ValueError:
            return -1

    return NgasFileStatus(
        file_id=a.get("FileId", ""), file_version=_int("FileVersion"), file_size=_int("FileSize"),
        checksum=a.get("Checksum") or None, checksum_plugin=a.get("ChecksumPlugIn") or None,
        filename=a.get("FileName"), format=a.get("Format"), disk_id=disk_id, ingestion_date=a.get("IngestionDate"),
        file_status=a.get("FileStatus"))


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ArchiveResult:
    file_id: str
    file_version: int
    file_size: int
    checksum: str            # as NGAS reported it
    checksum_plugin: str
    digests: dict[str, str]  # our own, hex, computed while streaming
    disk_id: str | None
    attempts: int
    seconds: float
    status: NgasStatus = field(repr=False)


@dataclass(frozen=True)
class RetrieveResult:
    path: Path
    size: int
    digests: dict[str, str]
    filename: str | None  # from Content-Disposition


FILE_OK = "NGAMS_INFO_FILE_OK"
FILE_NOK = "NGAMS_ER_FILE_NOK"
UNAVAIL_FILE = "NGAMS_ER_UNAVAIL_FILE"
UNKNOWN_MIME_CODES = ("NGAMS_ER_UNKNOWN_MIME_TYPE1", "NGAMS_ER_UNKNOWN_MIME_TYPE2", "NGAMS_AL_NO_STO_SETS",
                      "Unknown mime type")


def message_code(message: str) -> str:
    """``NGAMS_ER_FILE_NOK`` of ``NGAMS_ER_FILE_NOK:4057:ERROR: …`` (the whole text if it has no code)."""
    return message.split(":", 1)[0].strip()


@dataclass(frozen=True)
class CheckResult:
    """NGAS's CHECKFILE verdict on one stored file version.

    ``state`` is ``ok``, ``inconsistent`` (NGAS re-read the file and its size or CRC differs,
    or it is missing on disk) or ``missing`` (NGAS knows no such file id/version).
    """

    ok: bool
    message: str
    status: NgasStatus | None = field(repr=False)
    state: str = "ok"
    file_id: str = ""
    file_version: int | None = None


# ---------------------------------------------------------------- client


class NgasClient:
    """One NGAS server; reuse one client for many files (it keeps the connection open).

    ``crc_variant`` is asked of NGAS (``crc_variant=`` parameter) and computed while
    streaming. ``None`` lets the server choose; then both crc32 and crc32c are
    computed so either answer can be checked without a second read.

    ``preflight`` probes each mime type once (``ARCHIVE?probe=1&mime_type=``) before the
    first push of that type. NGAS refuses a type with no configured Stream before reading
    the body and then closes the connection: the probe learns it without sending a large
    body in vain, and without relying on the early reply being read (a reset connection
    would look transient).
    """

    def __init__(self, url: str, *, archive_command: str = ARCHIVE, crc_variant: str | None = "crc32c",
                 retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, timeout: float = 300.0,
                 block_size: int = BLOCK_SIZE, auth: Any = None, sleep: Callable[[float], None] = time.sleep,
                 client: httpx.Client | None = None, preflight: bool = True) -> None:
        if archive_command not in (ARCHIVE, QARCHIVE):
            raise ValueError(f"archive_command must be ARCHIVE or QARCHIVE, not {archive_command!r}")
        if crc_variant is not None and crc_variant not in REQUESTABLE_VARIANTS:
            raise ValueError(f"crc_variant must be one of {REQUESTABLE_VARIANTS} or None")
        self.url = url.rstrip("/")
        self.archive_command = archive_command
        self.crc_variant = crc_variant
        self.retries = max(1, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.block_size = block_size
        self._sleep = sleep
        self.preflight = preflight
        self._accepted_mime_types: set[str] = set()
        self._own_client = client is None
        self._http = client or httpx.Client(
            base_url=self.url, auth=auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0), pool=min(timeout, 15.0)))

    def close(self) -> None:
        if self._own_client:
            self._http.close()

    def __enter__(self) -> "NgasClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ archive

    def archive(self, path: str | Path, *, file_id: str | None = None, mime_type: str | None = None,
                no_versioning: bool = False, extra_algorithms: tuple[str, ...] = (),
                label: str | None = None) -> ArchiveResult:
        """Push one file; return NGAS's file id/version/CRC once the CRC matches ours.

        Every error names the file (``label``, default its name), its NGAS id and mime type.
        """
        path = Path(path)
        file_id = file_id or path.name
        check_relative_name(file_id, what="NGAS file id", max_length=1024)
        if "/" in file_id:
            raise UserError(f"NGAS file id {file_id!r} must not contain '/'")
        mime = mime_type or mime_type_for(path.name)
        what = f"{label or path.name} (NGAS file id {file_id}, mime type {mime})"
        try:
            if self.preflight and mime not in self._accepted_mime_types:
                self.probe(mime, file_id)
            return self._archive(path, file_id, mime, no_versioning, extra_algorithms)
        except NgasFailure as exc:
            hint = ""
            if message_code(exc.message) in UNKNOWN_MIME_CODES:
                hint = (f"; configure an NGAS Stream for mime type {mime} (e.g. PlugIn=\"ngamsGenDapi\", "
                        "see docs/nrao.md)")
            raise _named(exc, f"NGAS refused {what}: {exc.message}{hint}") from exc
        except NgasError as exc:
            raise _named(exc, f"{what}: {exc.message}") from exc

    def probe(self, mime_type: str, file_id: str = "") -> NgasStatus:
        """Ask NGAS whether it has a Stream (and a volume) for ``mime_type``, without sending data."""
        params = {"probe": "1", "mime_type": mime_type}
        if file_id:
            params["filename"] = file_id
        status = self._request("GET", ARCHIVE, params=params)[0]
        if message_code(status.message) == "NGAMS_ER_ARCH_REQ_NOK":
            raise NgasUnavailable(status.message, http_status=status.http_status, status=status)
        self._accepted_mime_types.add(mime_type)
        return status

    def _archive(self, path: Path, file_id: str, mime: str, no_versioning: bool,
                 extra_algorithms: tuple[str, ...]) -> ArchiveResult:
        size = path.stat().st_size
        crc_algos = ("crc32", "crc32c") if self.crc_variant is None else (CRC_PLUGINS[self.crc_variant],)
        algorithms = tuple(dict.fromkeys(crc_algos + tuple(extra_algorithms)))
        params = {"filename": file_id, "mime_type": mime, "no_versioning": "1" if no_versioning else "0"}
        if self.crc_variant is not None:
            params["crc_variant"] = self.crc_variant
        disposition = f'attachment; filename="{file_id}"' + ("; no_versioning=1" if no_versioning else "")
        headers = {"Content-Type": mime, "Content-Length": str(size), "Content-Disposition": disposition}

        holder: dict[str, MultiHasher] = {}

        def body() -> Iterator[bytes]:
            holder["h"] = hasher = MultiHasher(algorithms)
            yield from self._read_exactly(path, size, hasher)

        t0 = time.perf_counter()
        status, attempts = self._request("POST", self.archive_command, params=params, headers=headers, content=body)
        elapsed = time.perf_counter() - t0
        hasher = holder["h"]
        if hasher.size != size:
            raise NgasError(f"sent {hasher.size} of {size} bytes of {path.name}")
        digests = hasher.hexdigests()
        return self._verify_archive(path, file_id, size, digests, status, attempts, elapsed)

    def _read_exactly(self, path: Path, size: int, hasher: MultiHasher) -> Iterator[bytes]:
        with open(path, "rb", buffering=0) as fh:
            left = size
            while left:
                block = fh.read(min(self.block_size, left))
                if not block:
                    raise NgasError(f"{path.name} shrank while being sent ({size - left} of {size} bytes)")
                hasher.update(block)
                left -= len(block)
                yield block
            if os.fstat(fh.fileno()).st_size != size:
                raise NgasError(f"{path.name} changed size while being sent")

    def _verify_archive(self, path: Path, file_id: str, size: int, digests: dict[str, str], status: NgasStatus,
                        attempts: int, elapsed: float) -> ArchiveResult:
        if not status.files:
            raise NgasError(f"NGAS accepted {file_id} but its reply has no FileStatus: {status.message}",
                            status=status)
        fs = status.files[0]
        if fs.file_size != size:
            raise NgasChecksumMismatch(f"NGAS stored {fs.file_size} bytes for {file_id} (version "
                                       f"{fs.file_version}); we sent {size}", status=status)
        if not fs.checksum or not fs.checksum_plugin:
            raise NgasError(f"NGAS reported no checksum for {file_id}; cannot verify the transfer", status=status)
        algo = crc_algorithm(fs.checksum_plugin)
        if algo not in digests:
            # The server picked another variant than we asked for: one more local read.
            digests = {**digests, algo: hash_file(path, (algo,), self.block_size).checksums[algo]}
        if not crc_matches(fs.checksum_plugin, fs.checksum, digests[algo]):
            raise NgasChecksumMismatch(
                f"checksum mismatch for {file_id} version {fs.file_version}: NGAS {fs.checksum_plugin}="
                f"{fs.checksum}, ours {crc_to_ngas(fs.checksum_plugin, digests[algo])}", status=status)
        return ArchiveResult(fs.file_id or file_id, fs.file_version, fs.file_size, fs.checksum, fs.checksum_plugin,
                             digests, fs.disk_id, attempts, elapsed, status)

    # ------------------------------------------------------------ retrieve / status / checkfile

    def retrieve(self, file_id: str, dest: str | Path, *, file_version: int | None = None,
                 algorithms: tuple[str, ...] = ("crc32c",)) -> RetrieveResult:
        """Stream a file to ``dest`` (a file, or a directory: then NGAS's filename is used), atomically."""
        params = {"file_id": file_id}
        if file_version is not None:
            params["file_version"] = str(file_version)
        dest = Path(dest)
        last: BaseException | None = None
        for attempt in range(1, self.retries + 1):
            try:
                with self._http.stream("GET", "/RETRIEVE", params=params, follow_redirects=True) as resp:
                    if resp.status_code != 200:
                        self._raise_for(resp.status_code, self._read_reply(resp), "RETRIEVE")
                    filename = _disposition_filename(resp.headers.get("Content-Disposition"))
                    target = dest
                    if dest.is_dir():
                        if not filename:
                            raise NgasError("RETRIEVE reply has no Content-Disposition filename")
                        check_relative_name(filename, what="retrieved file name")
                        target = dest / Path(filename).name
                    return self._stream_to(resp, target, filename, algorithms)
            except (httpx.TransportError, _Transient) as exc:
                last = exc
                self._pause(attempt)
        raise NgasUnavailable(f"RETRIEVE {file_id} failed after {self.retries} attempts: {last}")

    def _stream_to(self, resp: httpx.Response, target: Path, filename: str | None,
                   algorithms: tuple[str, ...]) -> RetrieveResult:
        hasher = MultiHasher(algorithms)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(tmp, "wb") as out:
                for chunk in resp.iter_raw(self.block_size):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            expected = resp.headers.get("Content-Length")
            if expected is not None and int(expected) != hasher.size:
                raise _Transient(f"RETRIEVE got {hasher.size} of {expected} bytes")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return RetrieveResult(target, hasher.size, hasher.hexdigests(), filename)

    def status(self, file_id: str | None = None, file_version: int | None = None) -> NgasStatus:
        """Server status, or one file's status (latest version unless given)."""
        params: dict[str, str] = {}
        if file_id is not None:
            params["file_id"] = file_id
        if file_version is not None:
            params["file_version"] = str(file_version)
        return self._request("GET", "STATUS", params=params)[0]

    def file_status(self, file_id: str, file_version: int | None = None) -> NgasFileStatus:
        st = self.status(file_id, file_version)
        matches = [f for f in st.files if f.file_id == file_id]
        if not matches:
            raise NgasFailure(f"NGAS STATUS lists no file {file_id!r}", http_status=st.http_status, status=st)
        return max(matches, key=lambda f: f.file_version)

    def check_file(self, file_id: str, file_version: int, disk_id: str | None = None) -> CheckResult:
        """NGAS re-reads its stored copy of one version and compares size and CRC with its records.

        A damaged, vanished or unknown file is a result (``ok=False``, ``state`` says which), not
        an exception. NGAS 12 answers an inconsistent file with HTTP 200 and ``Status="SUCCESS"``;
        only the message code (``NGAMS_ER_FILE_NOK``) tells, so the code is what we read. An
        unknown id is HTTP 400 on NGAS 12 and 404 elsewhere: both are ``missing``. NGAS checks
        version 1 when no version is sent, so the version is always sent here.
        """
        return self.checkfile(file_id, file_version, disk_id)

    def checkfile(self, file_id: str, file_version: int | None = None, disk_id: str | None = None) -> CheckResult:
        """``check_file`` with NGAS's own default: without ``file_version`` NGAS checks version 1."""
        params = {"file_id": file_id}
        if file_version is not None:
            params["file_version"] = str(file_version)
        if disk_id:
            params["disk_id"] = disk_id
        try:
            st = self._request("GET", "CHECKFILE", params=params)[0]
        except NgasFileUnavailable as exc:
            return CheckResult(False, exc.message, exc.status, "missing", file_id, file_version)
        except NgasFailure as exc:
            if message_code(exc.message) == FILE_NOK:  # an NGAS that sends the verdict as a FAILURE
                return CheckResult(False, exc.message, exc.status, "inconsistent", file_id, file_version)
            raise
        code = message_code(st.message)
        if code == FILE_OK:
            return CheckResult(True, st.message, st, "ok", file_id, file_version)
        if code == FILE_NOK:
            return CheckResult(False, st.message, st, "inconsistent", file_id, file_version)
        raise NgasError(f"CHECKFILE {file_id} version {file_version}: unexpected reply {st.message!r}", status=st)

    # ------------------------------------------------------------ plumbing

    def _request(self, method: str, command: str, *, params: dict[str, str], headers: dict[str, str] | None = None,
                 content: Callable[[], Iterator[bytes]] | None = None) -> tuple[NgasStatus, int]:
        last = ""
        for attempt in range(1, self.retries + 1):
            try:
                req = self._http.build_request(method, f"/{command}", params=params, headers=headers,
                                               content=content() if content else None)
                # NGAS clusters redirect reads to the node holding the file; a push is never redirected.
                resp = self._http.send(req, stream=True, follow_redirects=method == "GET")
                try:
                    body = self._read_reply(resp)
                finally:
                    resp.close()
                status = parse_status(body, resp.status_code)
                if resp.status_code == 200 and status.ok:
                    return status, attempt
                self._raise_for(resp.status_code, body, command, status)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            except _Transient as exc:
                last = str(exc)
            self._pause(attempt)
        raise NgasUnavailable(f"NGAS {command} failed after {self.retries} attempts: {last}")

    def _raise_for(self, code: int, body: bytes, command: str, status: NgasStatus | None = None) -> None:
        status = status or parse_status(body, code)
        if code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {code}: {status.message}")
        if message_code(status.message) == UNAVAIL_FILE:  # 400 on NGAS 12, 404 on others
            raise NgasFileUnavailable(status.message, http_status=code, status=status)
        raise NgasFailure(status.message or f"NGAS {command} answered HTTP {code}", http_status=code, status=status)

    def _read_reply(self, resp: httpx.Response) -> bytes:
        out = bytearray()
        for chunk in resp.iter_raw(65536):
            out += chunk
            if len(out) > MAX_REPLY_BYTES:
                raise _Transient(f"NGAS reply larger than {MAX_REPLY_BYTES} bytes")
        return bytes(out)

    def _pause(self, attempt: int) -> None:
        if attempt < self.retries:
            self._sleep(min(self.max_backoff, self.backoff * (2 ** (attempt - 1))))


def _named(exc: NgasError, message: str) -> NgasError:
    """The same kind of error, its message naming the file; NGAS's words stay in ``ngas_message``."""
    named = type(exc)(message, http_status=exc.http_status, status=exc.status)
    named.ngas_message = exc.ngas_message
    return named


class _Transient(Exception):
    """Internal: an attempt failed in a way worth retrying."""


_FILENAME_RE = re.compile(r'filename\s*=\s*"?([^";]+)"?', re.IGNORECASE)


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    m = _FILENAME_RE.search(header)
    return m.group(1).strip() if m else None
