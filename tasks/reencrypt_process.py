"""The parent's side of the EGA byte pass in a child process (``tasks.reencrypt_child`` says why).

The parent does the small, key-holding part exactly as the in-process pass does it (read the
envelope, open the session key with pgpy, refuse a non-AES cipher, let ``on_session_key`` refuse a
reused key), so those errors, and their order, are unchanged. It then hands the child the session
key over a pipe and turns the child's lines back into progress, a ``ReencryptResult``, or the
exception the pass raised.

Whatever ends the wait early (SIGTERM turned into Prefect's ``TerminationSignal``, Ctrl-C, any
error) kills the child before it propagates, so the caller's atomic staging writer removes a file
nobody is writing any more. A parent that dies outright takes the child with it (the child's
PR_SET_PDEATHSIG, and end of file on its stdin).
"""
from __future__ import annotations

import builtins
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tasks.checksum import Digest
from tasks.crypto import DEFAULT_BLOCK_SIZE, ReencryptResult, reencrypt
from tasks.errors import UserError
from tasks.openpgp import (Decryption, OpenPGPPrivateKey, SessionKey, choose_recipient, chunks_from_file,
                           decrypt_chunks)

_ROOT = Path(__file__).resolve().parent.parent
CHECK_SECONDS = 0.5  # how often a running pass asks ``still_wanted`` (an SDA cancel: one registry read)


@dataclass(frozen=True)
class PassOutcome:
    result: ReencryptResult
    peak_rss_mib: float | None  # VmHWM of the child that ran the pass; None when it ran in this process


def child_min_bytes() -> int:
    """Uploads from this size on are passed in a child process; smaller ones in this process.

    The child's fixed cost (an interpreter and ``cryptography``'s import, partly hidden behind the
    key unlock) would eat the 512 MiB speed target's margin, while below 1 GiB the pass is short
    enough that a cancel waits at most a few seconds for it (docs/architecture.md has the figures).
    ``INGEST_BYTE_PASS_CHILD_MIN_BYTES`` overrides it (0: always a child)."""
    return int(os.environ.get("INGEST_BYTE_PASS_CHILD_MIN_BYTES", str(1 << 30)))


def open_byte_pass(src: BinaryIO, dst: BinaryIO) -> ReencryptProcess | InProcessPass:
    """The pass for ``src`` into ``dst``: in a child process from ``child_min_bytes()`` on."""
    if os.fstat(src.fileno()).st_size >= child_min_bytes():
        return ReencryptProcess(src, dst)
    return InProcessPass(src, dst)


class InProcessPass:
    """The same pass in this process, for uploads too small to be worth a process of their own.

    ``still_wanted`` is not asked: the pass is over in a few seconds and the caller checks after it."""

    def __init__(self, src: BinaryIO, dst: BinaryIO) -> None:
        self.src, self.dst = src, dst

    def __enter__(self) -> InProcessPass:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, private_key: OpenPGPPrivateKey, vault_public_key: bytes, *,
            block_size: int = DEFAULT_BLOCK_SIZE,
            on_session_key: Callable[[SessionKey], None] | None = None,
            encrypted_algorithms: tuple[str, ...] = ("md5", "sha256"),
            hash_output: bool = True,
            on_progress: Callable[[int], None] | None = None,
            still_wanted: Callable[[], None] | None = None) -> PassOutcome:
        src: Any = _ReportingReader(self.src, on_progress) if on_progress is not None else self.src
        result = reencrypt(src, self.dst, private_key, vault_public_key, block_size=block_size,
                           on_session_key=on_session_key, encrypted_algorithms=encrypted_algorithms,
                           hash_output=hash_output)
        return PassOutcome(result, None)


class _ReportingReader:
    def __init__(self, raw: BinaryIO, on_progress: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_progress = on_progress

    def readinto(self, buf: Any) -> int | None:
        n = self.raw.readinto(buf)
        self.on_progress(n or 0)
        return n


class _SessionKeyKnown(Exception):
    """Stops the parent's own decryption once the session key is open: the child does the rest."""


def child_command() -> list[str]:
    return [sys.executable, "-S", "-m", "tasks.reencrypt_child", str(os.getpid())]


def child_env() -> dict[str, str]:
    """The caller's environment, with our ``sys.path`` (``-S`` means no site-packages of its own)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_ROOT), *(p for p in sys.path if p and os.path.isdir(p))])
    return env


class ReencryptProcess:
    """One byte pass of the file ``src`` into the file ``dst`` in a child process.

    Start it as soon as both files are open: the child's imports then overlap the parent's key
    unlock and session-key work. Use as a context manager; leaving it kills a child still running.
    ``dst`` is written at its current offset and the caller fsyncs it.
    """

    def __init__(self, src: BinaryIO, dst: BinaryIO) -> None:
        self.src, self.dst = src, dst
        self._finished = False
        dst.flush()
        self.proc = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=child_env(), cwd=_ROOT, close_fds=True,
                                     pass_fds=(src.fileno(), dst.fileno()))

    def __enter__(self) -> ReencryptProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Reap the child: one that reported its result is let exit, any other is killed now."""
        if self._finished:
            self._close_pipes()  # end of its stdin: it exits, if it has not already
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self._close_pipes()
        self.proc.wait()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    def run(self, private_key: OpenPGPPrivateKey, vault_public_key: bytes, *,
            block_size: int = DEFAULT_BLOCK_SIZE,
            on_session_key: Callable[[SessionKey], None] | None = None,
            encrypted_algorithms: tuple[str, ...] = ("md5", "sha256"),
            hash_output: bool = True,
            on_progress: Callable[[int], None] | None = None,
            still_wanted: Callable[[], None] | None = None) -> PassOutcome:
        """``tasks.crypto.reencrypt(src, dst, ...)`` with the bytes in the child. ``on_progress`` gets the
        bytes read since its last call; ``still_wanted`` is called every ``CHECK_SECONDS`` during the
        pass and raises to stop it (an SDA cancel recorded meanwhile, say)."""
        session, recipient_body = open_session_key(self.src, private_key, on_session_key)
        request = {"src_fd": self.src.fileno(), "dst_fd": self.dst.fileno(), "block_size": block_size,
                   "encrypted_algorithms": list(encrypted_algorithms), "hash_output": hash_output,
                   "vault_public_key": bytes(vault_public_key).hex(), "recipient_body": recipient_body.hex(),
                   "session": {"algorithm": session.algorithm, "key": session.key.hex(), "key_id": session.key_id}}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()  # stdin stays open: its end tells the child we are gone
        except BrokenPipeError:
            pass  # the child is dead: _collect says how
        return self._collect(on_progress, still_wanted)

    def _collect(self, on_progress: Callable[[int], None] | None,
                 still_wanted: Callable[[], None] | None) -> PassOutcome:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending, reported, checked = b"", 0, time.monotonic()
        while True:
            ready, _, _ = select.select([fd], [], [], CHECK_SECONDS)
            if still_wanted is not None and time.monotonic() - checked >= CHECK_SECONDS:
                still_wanted()  # raises to call the pass off: the caller's with kills the child
                checked = time.monotonic()
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                kind, _, payload = line.decode().partition(" ")
                if kind == "progress":
                    done = int(payload)
                    if on_progress is not None and done > reported:
                        on_progress(done - reported)
                    reported = max(reported, done)
                elif kind == "result":
                    data = json.loads(payload)
                    self._finished = True
                    return PassOutcome(decode_result(data), data["peak_rss_kib"] / 1024)
                elif kind == "error":
                    raise decode_error(json.loads(payload))
        code = self.proc.wait()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise RuntimeError(f"the byte pass process {how} before it reported a result")


def open_session_key(src: BinaryIO, private_key: OpenPGPPrivateKey,
                     on_session_key: Callable[[SessionKey], None] | None) -> tuple[SessionKey, bytes]:
    """The in-process pass's own code up to its ``on_session_key``: same checks, same errors, same order."""
    state = Decryption()

    def known(session: SessionKey) -> None:
        if on_session_key is not None:
            on_session_key(session)
        raise _SessionKeyKnown

    plain = decrypt_chunks(chunks_from_file(src), private_key, state=state, on_session_key=known)
    try:
        next(plain)
    except _SessionKeyKnown:
        pass
    finally:
        plain.close()
    assert state.session is not None and state.envelope is not None
    return state.session, choose_recipient(state.envelope, private_key).body


def decode_result(data: dict[str, Any]) -> ReencryptResult:
    return ReencryptResult(
        encrypted=Digest(data["encrypted"]["size"], data["encrypted"]["checksums"]),
        plaintext=Digest(data["plaintext"]["size"], data["plaintext"]["checksums"]),
        output_size=data["output_size"], output_sha256=data["output_sha256"],
        session_key_sha256=data["session_key_sha256"], key_id=data["key_id"], cipher=data["cipher"],
        compression=data["compression"], literal_filename=data["literal_filename"],
        output_crc32c=data.get("output_crc32c"))


def decode_error(data: dict[str, Any]) -> BaseException:
    """The child's error as the parent's exception: a ``UserError`` stays one (never retried); anything
    else is a system error of the same type name and text, so retries and reports read as before."""
    if data["kind"] == "user":
        return UserError(data["message"], code=data.get("code"))
    if data.get("errno") is not None:
        args = (data["errno"], data["strerror"]) + ((data["filename"],) if data.get("filename") else ())
        return OSError(*args)  # picks the subclass for the errno, as the kernel's error would
    cls = getattr(builtins, data["type"], None)
    if isinstance(cls, type) and issubclass(cls, (ValueError, RuntimeError, TypeError, LookupError, ArithmeticError,
                                                   AssertionError, EOFError, BufferError)):
        return cls(data["message"])
    # Any other type (cryptography's, say): an exception of the same name and text.
    named = type(data["type"], (RuntimeError,), {"__module__": data.get("module") or __name__})
    return named(data["message"])
