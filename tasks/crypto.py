"""One pass over an EGA upload: hash the OpenPGP file, decrypt it, hash the plaintext,
Crypt4GH-encrypt it for the vault and hash what was written.

Work is spread over threads that each own one job, fed in order through
bounded queues with chunks from fixed buffer pools (see ``tasks.openpgp`` for
the ``(view, owner)`` convention):

    main:      read ─► parse ─► AES-CFB ─► inner packets ─► literal data
    cipher:    md5 + sha256 of every byte read            (MultiHasher)
    mdc:       SHA-1 of the decrypted stream              (integrity check)
    plain:     sha256 + md5 of the literal data           (MultiHasher)
    c4gh:      64 KiB ChaCha20-Poly1305 segments ─► dst.write
    out:       sha256 of every byte written

hashlib and ``cryptography`` release the GIL on large buffers, so these jobs run
on both cores at once; memory is the pools (~15 MiB at the default 1 MiB block)
whatever the file size.

Output is written while decrypting, before the MDC at the end of the file is
known: on any exception the caller must discard ``dst`` (the lead's atomic
staging writer does). A ``UserError`` means the input is at fault.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from tasks.c4gh import CIPHER_SEGMENT_SIZE, SegmentEncryptor, make_header
from tasks.checksum import Digest, MultiHasher, new_hasher
from tasks.openpgp import (SEIPD_SLACK, Buffer, BufferPool, Chunk, Decryption, OpenPGPPrivateKey, SessionKey,
                           decrypt_chunks)

DEFAULT_BLOCK_SIZE = 1 << 20
_QUEUE_DEPTH = 8
# Buffers per pool: enough in flight to ride out a worker being descheduled for a few ms.
RAW_BUFFERS = 4
DECRYPTED_BUFFERS = 6
OUTPUT_BUFFERS = 4
BATCH_BUFFERS = 6  # small pieces gathered: a compressed upload's inflated plaintext, gpg's partial lengths


@dataclass(frozen=True)
class ReencryptResult:
    encrypted: Digest  # the uploaded OpenPGP file: size, md5, sha256
    plaintext: Digest  # the literal data: size, sha256, md5
    output_size: int  # the Crypt4GH bytes written to dst
    output_sha256: str | None  # None when asked not to hash the output
    session_key_sha256: str  # to refuse a session key already used by another file
    key_id: str  # the PKESK recipient that was used
    cipher: str
    compression: str
    literal_filename: str
    output_crc32c: str | None = None  # with output_sha256: what the vault's one read-back compares

    @property
    def output(self) -> Digest:
        return Digest(self.output_size, {"sha256": self.output_sha256})


class _Worker:
    """A thread applying ``handle`` to chunks in submission order.

    After an error it keeps draining (releasing buffers, so producers blocked on
    a pool wake up) and the error surfaces on the next ``submit`` or ``finish``.
    """

    def __init__(self, name: str, handle: Callable[[Any], None], depth: int = _QUEUE_DEPTH) -> None:
        self._handle = handle
        self._queue: queue.Queue[Chunk | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._skip = False
        self._thread = threading.Thread(target=self._run, name=f"reencrypt-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            data, owner = item
            try:
                if self._error is None and not self._skip:
                    self._handle(data)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the producer's thread
                self._error = exc
            finally:
                if owner is not None:
                    owner.release()

    def submit(self, data: Any, owner: Buffer | None) -> None:
        if self._error is not None:
            raise self._error
        if owner is not None:
            owner.retain()
        self._queue.put((data, owner))

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self._skip = True
        self._queue.put(None)
        self._thread.join()


class _WorkerDigest:
    """``DigestTap`` for the MDC: SHA-1 on its own thread."""

    def __init__(self) -> None:
        self._h = hashlib.sha1()
        self.worker = _Worker("mdc", self._h.update)

    def update(self, data: Any, owner: Buffer | None) -> None:
        self.worker.submit(data, owner)

    def digest(self) -> bytes:
        self.worker.finish()
        return self._h.digest()


class _Crypt4GHSink:
    """Seals plaintext into segments in pooled output buffers, writes them, and passes them on to be hashed."""

    def __init__(self, dst: BinaryIO, data_key: bytes, out_hash: _Worker, block_size: int) -> None:
        self._dst = dst
        self._enc = SegmentEncryptor(data_key)
        self._out_hash = out_hash
        self._pool = BufferPool(OUTPUT_BUFFERS, SegmentEncryptor.max_output(block_size))
        self._max_in = block_size
        self._cur: Buffer | None = None
        self._len = 0
        self.written = 0

    def write(self, data: Any) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        for start in range(0, len(view), self._max_in):
            piece = view[start:start + self._max_in]
            need = SegmentEncryptor.max_output(len(piece))
            if self._cur is not None and self._len + need > self._pool.size:
                self.flush()
            if self._cur is None:
                self._cur = self._pool.get()
                self._len = 0
            self._len += self._enc.encrypt_into(piece, self._cur.view[self._len:])

    def flush(self) -> None:
        cur, n = self._cur, self._len
        self._cur, self._len = None, 0
        if cur is None:
            return
        try:
            if n:
                view = cur.view[:n]
                self._dst.write(view)
                self.written += n
                self._out_hash.submit(view, cur)
        finally:
            cur.release()

    def finish(self) -> None:
        if self._cur is not None and self._pool.size - self._len < CIPHER_SEGMENT_SIZE:
            self.flush()
        if self._cur is None:
            self._cur = self._pool.get()
            self._len = 0
        self._len += self._enc.finish_into(self._cur.view[self._len:])
        self.flush()


def _raw_chunks(src: BinaryIO, pool: BufferPool, tap: _Worker) -> Any:
    """Read ``src`` into pooled buffers; every byte goes to the ciphertext hashers as well."""
    readinto = getattr(src, "readinto", None)
    while True:
        buf = pool.get()
        try:
            if readinto is not None:
                n = readinto(buf.buf)
            else:
                data = src.read(buf.size)
                n = len(data)
                buf.view[:n] = data
            if n is None:
                raise BlockingIOError("non-blocking source returned no data")
            if not n:
                return
            view = buf.view[:n]
            tap.submit(view, buf)
            yield view, buf
        finally:
            buf.release()


def reencrypt(src: BinaryIO, dst: BinaryIO, private_key: OpenPGPPrivateKey, vault_public_key: bytes, *,
              block_size: int = DEFAULT_BLOCK_SIZE,
              on_session_key: Callable[[SessionKey], None] | None = None,
              encrypted_algorithms: tuple[str, ...] = ("md5", "sha256"),
              hash_output: bool = True) -> ReencryptResult:
    """Decrypt the OpenPGP file ``src`` and write it Crypt4GH-encrypted to ``vault_public_key`` into ``dst``.

    ``on_session_key`` is called once the session key is known and before any
    data is decrypted; raising there (e.g. a ``UserError`` for a session key
    already recorded for another file) stops the pass early.
    """
    if block_size < 64 << 10:
        raise ValueError("block_size must be at least 64 KiB")
    # Every digest costs CPU on a 2-core budget: the flow asks only for the ciphertext
    # algorithm it must compare, and lets the vault put hash the output it re-reads anyway.
    cipher_hasher = MultiHasher(encrypted_algorithms)
    plain_hasher = MultiHasher(("sha256", "md5"))
    # sha256 of every byte written (what the registry records) and its CRC32C (~20 GB/s, against 1.5 GB/s
    # for sha256): the vault's one verifying read compares the CRC, a read rather than a second sha256
    out_sha256, out_crc32c = new_hasher("sha256"), new_hasher("crc32c")

    def hash_out(data: Any) -> None:
        out_sha256.update(data)
        out_crc32c.update(data)

    data_key = os.urandom(32)
    header = make_header(data_key, [bytes(vault_public_key)])

    cipher_w = _Worker("cipher", cipher_hasher.update)
    mdc = _WorkerDigest()
    plain_w = _Worker("plain", plain_hasher.update)
    out_w = _Worker("out", hash_out if hash_output else (lambda data, owner=None: None))
    sink = _Crypt4GHSink(dst, data_key, out_w, block_size)
    c4gh_w = _Worker("c4gh", sink.write)
    workers = [cipher_w, mdc.worker, plain_w, c4gh_w, out_w]

    raw_pool = BufferPool(RAW_BUFFERS, block_size)
    dec_pool = BufferPool(DECRYPTED_BUFFERS, block_size, slack=SEIPD_SLACK)
    batch_pool = BufferPool(BATCH_BUFFERS, block_size)
    state = Decryption()
    plain = decrypt_chunks(_raw_chunks(src, raw_pool, cipher_w), private_key, pool=dec_pool, mdc=mdc,
                           state=state, on_session_key=on_session_key, batch_pool=batch_pool,
                           block_size=block_size)
    try:
        dst.write(header)
        out_w.submit(header, None)
        for data, owner in plain:
            plain_w.submit(data, owner)
            c4gh_w.submit(data, owner)
        cipher_w.finish()
        plain_w.finish()
        c4gh_w.finish()
        sink.finish()
        out_w.finish()
    except BaseException:
        plain.close()
        for worker in workers:
            worker.abort()
        raise
    assert state.session is not None and state.literal is not None
    return ReencryptResult(
        encrypted=Digest(cipher_hasher.size, cipher_hasher.hexdigests()),
        plaintext=Digest(plain_hasher.size, plain_hasher.hexdigests()),
        output_size=len(header) + sink.written,
        output_sha256=out_sha256.hexdigest() if hash_output else None,
        output_crc32c=out_crc32c.hexdigest() if hash_output else None,
        session_key_sha256=state.session.sha256,
        key_id=state.session.key_id,
        cipher=state.session.cipher,
        compression=state.literal.compression,
        literal_filename=state.literal.filename,
    )
