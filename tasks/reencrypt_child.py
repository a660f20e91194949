"""The EGA byte pass in a process of its own: ``python -S -m tasks.reencrypt_child PARENT_PID``.

Why a process: the flow's process holds Prefect and its libraries (~185 MiB, shared with the warm
runner), so no pass run inside it can have a small peak; and a thread in the middle of a 2 GiB pass
cannot be stopped, while a process can be killed at once. This one imports only hashlib,
``cryptography`` and our openpgp/c4gh/checksum modules (no pgpy: the parent opens the session key),
so its peak is an interpreter plus the pass's fixed buffer pools, whatever the file size. ``-S``
skips site-packages' ``.pth`` hooks; the parent puts its own ``sys.path`` in ``PYTHONPATH``.

Protocol with the parent (``tasks.reencrypt_process``), nothing secret on argv or in the environment:

* fds: the inbox file (read from offset 0) and the staging file (written from its current offset),
  inherited by number;
* stdin: one JSON line (the session key, the PKESK it came from, the vault's public key, options),
  then nothing until the parent closes it: end of file means the parent is gone, and so do we
  (PR_SET_PDEATHSIG does the same on Linux without waiting for a thread to run);
* stdout: ``progress <bytes read>`` lines at most every ``PROGRESS_SECONDS``, then one
  ``result <json>`` or ``error <json>``. An error says whether the input is at fault
  (``UserError``: code and message) or not (type, errno, message), so the parent raises what the
  pass would have raised in-process, with the same text.

The imports happen before the request is read: they overlap the parent's key unlock.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import Any, BinaryIO

PROGRESS_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the parent dies (Linux), and exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def peak_rss_kib() -> int:
    """VmHWM of this process: what the pass itself peaked at."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; no /proc elsewhere


def encode_error(exc: BaseException) -> dict[str, Any]:
    """What the parent needs to raise the same error: the kind first, the exact text always."""
    from tasks.errors import UserError

    if isinstance(exc, UserError):
        return {"kind": "user", "message": exc.message, "code": exc.code}
    out: dict[str, Any] = {"kind": "system", "type": type(exc).__name__, "module": type(exc).__module__,
                           "message": str(exc)}
    if isinstance(exc, OSError) and exc.errno is not None:
        out.update(errno=exc.errno, strerror=exc.strerror, filename=exc.filename)
    return out


class _Channel:
    """Lines to the parent; one writer at a time."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()

    def send(self, kind: str, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        with self._lock:
            self._out.write(f"{kind} {text}\n".encode())
            self._out.flush()


class _CountingReader:
    """The inbox file, telling the parent how far the pass has read (its progress artifact)."""

    def __init__(self, raw: BinaryIO, channel: _Channel) -> None:
        self.raw = raw
        self.done = 0
        self._channel = channel
        self._last = time.monotonic()

    def readinto(self, buf: Any) -> int | None:
        n = self.raw.readinto(buf)
        self.done += n or 0
        now = time.monotonic()
        if now - self._last >= PROGRESS_SECONDS:
            self._last = now
            self._channel.send("progress", str(self.done))
        return n


class KnownSessionKey:
    """Stands in for the archive's private key: holds exactly the PKESK the parent opened."""

    def __init__(self, session: Any, recipient_body: bytes) -> None:
        self._session = session
        self._body = recipient_body

    def holds(self, recipient: Any) -> bool:
        return recipient.body == self._body

    def decrypt_session_key(self, recipient: Any) -> Any:
        return self._session


def _read_request(fd: int) -> bytes:
    """The first line on ``fd``, read unbuffered: the watcher thread owns the fd afterwards."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        line += chunk
    return line


_REPORTED = threading.Event()


def _exit_when_parent_closes(fd: int) -> None:
    while os.read(fd, 1 << 12):
        pass
    os._exit(0 if _REPORTED.is_set() else 1)  # after our report the parent closing is the normal end


def serve(request: dict[str, Any], channel: _Channel) -> dict[str, Any]:
    """Run the pass the request describes; the result as JSON-ready data."""
    from tasks.crypto import reencrypt
    from tasks.openpgp import SessionKey

    session = SessionKey(int(request["session"]["algorithm"]), bytes.fromhex(request["session"]["key"]),
                         request["session"]["key_id"])
    key = KnownSessionKey(session, bytes.fromhex(request["recipient_body"]))
    os.lseek(request["src_fd"], 0, os.SEEK_SET)  # the parent read the envelope through the same fd
    with open(request["src_fd"], "rb", buffering=0) as raw, open(request["dst_fd"], "wb") as dst:
        reader = _CountingReader(raw, channel)
        result = reencrypt(reader, dst, key, bytes.fromhex(request["vault_public_key"]),  # type: ignore[arg-type]
                           block_size=request["block_size"],
                           encrypted_algorithms=tuple(request["encrypted_algorithms"]),
                           hash_output=request["hash_output"])
        dst.flush()
    channel.send("progress", str(reader.done))
    return {"encrypted": {"size": result.encrypted.size, "checksums": result.encrypted.checksums},
            "plaintext": {"size": result.plaintext.size, "checksums": result.plaintext.checksums},
            "output_size": result.output_size, "output_sha256": result.output_sha256,
            "output_crc32c": result.output_crc32c,
            "session_key_sha256": result.session_key_sha256, "key_id": result.key_id, "cipher": result.cipher,
            "compression": result.compression, "literal_filename": result.literal_filename,
            "peak_rss_kib": peak_rss_kib()}


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    die_with_parent(int(argv[0]))
    channel = _Channel(sys.stdout.buffer)
    sys.stdout = sys.stderr  # nothing else may write into the protocol
    import tasks.crypto  # noqa: F401  (now, while the parent unlocks the session key)

    line = _read_request(0)
    if not line:
        return 1  # the parent gave up before asking (a refused session key, say)
    threading.Thread(target=_exit_when_parent_closes, args=(0,), name="parent-watch", daemon=True).start()
    try:
        result = serve(json.loads(line), channel)
        _REPORTED.set()
        channel.send("result", result)
    except Exception as exc:  # noqa: BLE001 - every failure goes back typed; the parent raises it
        _REPORTED.set()
        channel.send("error", encode_error(exc))
    return 0


if __name__ == "__main__":
    # Everything is written and flushed: leave without the interpreter's teardown (and its daemon thread).
    os._exit(main(sys.argv[1:]))
