"""Streaming OpenPGP decryption (RFC 4880): PKESK → SEIPD v1 → [compressed] → literal.

pgpy decrypts a whole message in memory (measured 4.5x the file size), so it is
used only for what is small: parsing the private key and decrypting the session
key out of the PKESK packet. Everything after that is streamed here, in chunks,
with ``cryptography``:

* packet headers in old and new format, with 1/2/4-octet, indeterminate and
  partial body lengths (RFC 4880 §4.2; gpg writes partial lengths for stdin);
* SEIPD (tag 18, version 1): AES-CFB with a zero IV over
  ``prefix(bs+2) || packets || 0xD3 0x14 || SHA-1``; the quick check on the
  prefix rejects a wrong session key and the MDC (SHA-1 over everything up to
  and including ``0xD3 0x14``) rejects any modification or truncation (§5.13);
* legacy SED (tag 9, no integrity protection) and AEAD packets are refused;
* compressed data (tag 8: ZIP = raw deflate, ZLIB, BZip2), decompressed in
  bounded chunks, and the literal data packet (tag 11) inside; one-pass
  signature and signature packets of a signed-then-encrypted file are skipped.
  Deflate goes through ISA-L's inflate (``isal``), 2.5x zlib's here: it was the
  largest cost of a pass over gpg's default (ZLIB-compressed) output. Same
  bytes, errors and end-of-stream checks as zlib; without ``isal``, zlib.

Chunks travel as ``(view, owner)`` pairs. A view is *borrowed*: it stays valid
until the consumer asks its producer for the next chunk. ``owner`` is a
``Buffer`` from a ``BufferPool`` (or ``None`` for bytes nobody recycles); a
consumer that hands a view to another thread must ``retain()`` the owner first
and that thread ``release()`` it when done. Reusing a few preallocated buffers
instead of allocating one per chunk matters: fresh multi-MiB allocations cost
page faults that made AES-CFB 20x slower here than ``update_into`` a reused buffer.

Every problem with the input is a ``UserError`` naming what is wrong.
"""
from __future__ import annotations

import bz2
import hashlib
import queue
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:
    from isal import isal_zlib as _deflate

    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _deflate.error)
except ImportError:  # the stdlib's inflate: slower, same results
    _deflate = zlib  # type: ignore[assignment]
    _INFLATE_ERRORS = (zlib.error,)

try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # older cryptography: CFB still among the regular modes
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[no-redef]

from tasks.errors import UserError

# Packet tags (RFC 4880 §4.3, RFC 9580 §5)
TAG_PKESK = 1
TAG_SIGNATURE = 2
TAG_SKESK = 3
TAG_ONE_PASS_SIGNATURE = 4
TAG_COMPRESSED = 8
TAG_SED = 9
TAG_MARKER = 10
TAG_LITERAL = 11
TAG_SEIPD = 18
TAG_MDC = 19
TAG_AEAD = 20
TAG_PADDING = 21

PACKET_NAMES = {
    1: "public-key encrypted session key", 2: "signature", 3: "symmetric-key encrypted session key",
    4: "one-pass signature", 5: "secret key", 6: "public key", 7: "secret subkey", 8: "compressed data",
    9: "symmetrically encrypted data", 10: "marker", 11: "literal data", 12: "trust", 13: "user id",
    14: "public subkey", 17: "user attribute", 18: "sym. encrypted integrity protected data",
    19: "modification detection code", 20: "AEAD encrypted data", 21: "padding",
}
# Symmetric algorithm ids (RFC 4880 §9.2): id -> (name, key bytes); only AES is decrypted.
AES_KEY_SIZES = {7: ("AES-128", 16), 8: ("AES-192", 24), 9: ("AES-256", 32)}
CIPHER_NAMES = {0: "plaintext", 1: "IDEA", 2: "TripleDES", 3: "CAST5", 4: "Blowfish", 7: "AES-128", 8: "AES-192",
                9: "AES-256", 10: "Twofish", 11: "Camellia-128", 12: "Camellia-192", 13: "Camellia-256"}
COMPRESSION_NAMES = {0: "uncompressed", 1: "ZIP", 2: "ZLIB", 3: "BZip2"}

MDC_TRAILER = 22  # 0xD3 0x14 + 20-byte SHA-1
RESERVE = MDC_TRAILER  # room in front of each decrypted buffer for the held-back tail
SEIPD_SLACK = RESERVE + 16  # + AES block: update_into wants len(out) >= len(in) + 15
_PARTIAL_OK = {TAG_COMPRESSED, TAG_SED, TAG_LITERAL, TAG_SEIPD, TAG_AEAD}
_MAX_SMALL_PACKET = 1 << 20  # session keys, signatures, markers: anything bigger is not what it claims
# Inflate is fed and drained in pieces of at most 64 KiB: below malloc's mmap threshold (128 KiB), so
# the memory of each piece is reused rather than faulted in afresh (1 MiB pieces cost 135k page faults,
# 0.3 s, per 512 MiB pass), and a slice of input never leaves a long unconsumed tail to copy. ``coalesce``
# gathers the pieces into pooled block-sized buffers before they reach the hash and Crypt4GH threads.
_INFLATE_PIECE = 64 << 10
_MAX_COMPRESSION_DEPTH = 2


# ---------------------------------------------------------------- buffers


class Buffer:
    """A reusable bytearray with a reference count; returns to its pool at zero."""

    __slots__ = ("buf", "view", "size", "_refs", "_pool", "_lock")

    def __init__(self, size: int, pool: BufferPool | None = None, slack: int = 0) -> None:
        self.buf = bytearray(size + slack)
        self.view = memoryview(self.buf)
        self.size = size
        self._refs = 0
        self._pool = pool
        self._lock = threading.Lock()

    def retain(self) -> None:
        with self._lock:
            self._refs += 1

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            free = self._refs == 0
        if free and self._pool is not None:
            self._pool._free.put(self)


class BufferPool:
    """At most ``count`` buffers: ``get`` blocks until a consumer thread releases one.

    The fixed count is what bounds memory: a stage can run ahead of its slowest
    consumer by at most ``count`` buffers. Buffers are made on first need, so a
    pool that a file never uses (e.g. for gpg's small partial pieces) costs nothing.
    """

    def __init__(self, count: int, size: int, *, slack: int = 0) -> None:
        self.size = size
        self._slack = slack
        self._unmade = count
        self._free: queue.SimpleQueue[Buffer] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def get(self) -> Buffer:
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                make = self._unmade > 0
                self._unmade -= make
            buf = Buffer(self.size, self, self._slack) if make else self._free.get()
        buf._refs = 1
        return buf


Chunk = tuple[Any, Any]  # (bytes | memoryview, Buffer | None)


class DigestTap(Protocol):
    """Where a stage sends bytes to be hashed (inline, or a worker thread in tasks.crypto)."""

    def update(self, data: Any, owner: Buffer | None) -> None: ...

    def digest(self) -> bytes: ...


class InlineDigest:
    """The single-threaded ``DigestTap``: hash right away on the caller's thread."""

    def __init__(self, algorithm: str) -> None:
        self._h = hashlib.new(algorithm)

    def update(self, data: Any, owner: Buffer | None) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


# ---------------------------------------------------------------- chunk stream


class ChunkStream:
    """Pull reader over borrowed chunks: small exact reads copy, bulk reads stay zero-copy."""

    def __init__(self, chunks: Iterator[Chunk], what: str = "OpenPGP data") -> None:
        self._chunks = chunks
        self._view: memoryview = memoryview(b"")
        self._owner: Buffer | None = None
        self._pos = 0
        self._eof = False
        self.what = what
        self.consumed = 0

    def _fill(self) -> bool:
        while self._pos >= len(self._view):
            if self._eof:
                return False
            try:
                data, owner = next(self._chunks)
            except StopIteration:
                self._eof = True
                self._view, self._owner, self._pos = memoryview(b""), None, 0
                return False
            self._view = data if isinstance(data, memoryview) else memoryview(data)
            self._owner = owner
            self._pos = 0
        return True

    def at_eof(self) -> bool:
        return not self._fill()

    def peek(self, n: int) -> bytes:
        """Up to ``n`` upcoming bytes of the current chunk, without consuming them."""
        if not self._fill():
            return b""
        return bytes(self._view[self._pos:self._pos + n])

    def read_some(self, limit: int) -> Chunk | None:
        """Up to ``limit`` bytes from the current chunk, or None at EOF."""
        if not self._fill():
            return None
        end = min(len(self._view), self._pos + limit)
        view = self._view[self._pos:end]
        self._pos = end
        self.consumed += len(view)
        return view, self._owner

    def read_exact(self, n: int, what: str) -> bytes:
        parts = []
        need = n
        while need:
            got = self.read_some(need)
            if got is None:
                raise UserError(f"{self.what} is truncated: it ends inside the {what}", code="truncated")
            parts.append(bytes(got[0]))
            need -= len(got[0])
        return b"".join(parts)

    def read_byte(self) -> int | None:
        got = self.read_some(1)
        return None if got is None else got[0][0]

    def rest(self, limit: int = 1 << 30) -> Iterator[Chunk]:
        while True:
            got = self.read_some(limit)
            if got is None:
                return
            yield got


def chunks_from_file(src: BinaryIO, size: int = 64 << 10) -> Iterator[Chunk]:
    """Plain chunk source for small reads (key ids); the pipeline brings its own pooled one."""
    while True:
        data = src.read(size)
        if not data:
            return
        yield data, None


# ---------------------------------------------------------------- packet framing


@dataclass(frozen=True)
class PacketHeader:
    tag: int
    length: int | None  # None: indeterminate (old format, runs to the end of its container)
    partial: bool
    new_format: bool

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.tag, f"tag {self.tag}")


def _new_length(stream: ChunkStream, what: str) -> tuple[int, bool]:
    o1 = stream.read_exact(1, what)[0]
    if o1 < 192:
        return o1, False
    if o1 < 224:
        o2 = stream.read_exact(1, what)[0]
        return ((o1 - 192) << 8) + o2 + 192, False
    if o1 == 255:
        return int.from_bytes(stream.read_exact(4, what), "big"), False
    return 1 << (o1 & 0x1F), True


def read_header(stream: ChunkStream) -> PacketHeader | None:
    """Next packet header, or None at a clean end of the stream."""
    first = stream.read_byte()
    if first is None:
        return None
    if not first & 0x80:
        raise UserError(f"{stream.what} is not valid OpenPGP: byte 0x{first:02x} cannot start a packet",
                        code="bad_structure")
    what = "packet header"
    if first & 0x40:
        tag = first & 0x3F
        length, partial = _new_length(stream, what)
        if partial and tag not in _PARTIAL_OK:
            raise UserError(f"{stream.what} is not valid OpenPGP: partial length on a "
                            f"{PACKET_NAMES.get(tag, tag)} packet", code="bad_structure")
        return PacketHeader(tag, length, partial, True)
    tag = (first >> 2) & 0x0F
    kind = first & 0x03
    if kind == 3:
        return PacketHeader(tag, None, False, False)
    length = int.from_bytes(stream.read_exact(1 << kind, what), "big")
    return PacketHeader(tag, length, False, False)


def body_chunks(stream: ChunkStream, header: PacketHeader, limit: int = 1 << 30) -> Iterator[Chunk]:
    """The packet body as borrowed chunks, joining partial-length pieces."""
    what = f"{header.name} packet"
    if header.length is None:
        yield from stream.rest(limit)
        return
    length, partial = header.length, header.partial
    while True:
        remaining = length
        while remaining:
            got = stream.read_some(min(remaining, limit))
            if got is None:
                raise UserError(f"{stream.what} is truncated: it ends inside the {what}", code="truncated")
            remaining -= len(got[0])
            yield got
        if not partial:
            return
        length, partial = _new_length(stream, what)


def read_body(stream: ChunkStream, header: PacketHeader) -> bytes:
    """A small packet's whole body."""
    parts = []
    total = 0
    for data, _ in body_chunks(stream, header):
        total += len(data)
        if total > _MAX_SMALL_PACKET:
            raise UserError(f"{stream.what} is not valid OpenPGP: {header.name} packet larger than 1 MiB",
                            code="bad_structure")
        parts.append(bytes(data))
    return b"".join(parts)


def skip_body(stream: ChunkStream, header: PacketHeader) -> None:
    for _ in body_chunks(stream, header):
        pass


# ---------------------------------------------------------------- recipients


@dataclass(frozen=True)
class Recipient:
    """One PKESK packet: who the session key was encrypted to."""

    key_id: str  # 16 upper-case hex digits; all zeros for an anonymous ("--throw-keyids") recipient
    algorithm: int  # public-key algorithm id (1 = RSA, 16 = Elgamal, 18 = ECDH)
    body: bytes  # the packet body, for the session-key decryption

    @property
    def anonymous(self) -> bool:
        return self.key_id == "0" * 16


@dataclass(frozen=True)
class Envelope:
    """What precedes the encrypted data: its recipients, and the data packet's header."""

    recipients: list[Recipient]
    passphrase_protected: bool
    data_header: PacketHeader


def _not_openpgp(detail: str) -> UserError:
    return UserError(f"not an OpenPGP encrypted file: {detail}", code="not_openpgp")


def read_envelope(stream: ChunkStream) -> Envelope:
    """Parse the session-key packets up to (and including) the encrypted data packet's header."""
    recipients: list[Recipient] = []
    symmetric = False
    first = True
    if stream.peek(15).lstrip()[:10] == b"-----BEGIN":
        raise UserError("the file is ASCII-armored (gpg --armor); upload the binary output of gpg --encrypt",
                        code="armored")
    while True:
        try:
            header = read_header(stream)
            if header is not None and header.tag == TAG_PKESK:
                recipients.append(_parse_pkesk(read_body(stream, header)))
                first = False
                continue
        except UserError as exc:
            # Garbage that happens to start with a byte >= 0x80 fails somewhere in its first "packet".
            if first and exc.code in ("bad_structure", "unsupported_packet"):
                raise _not_openpgp(exc.message.split(": ", 1)[-1]) from exc
            raise
        if header is None:
            if first:
                raise _not_openpgp("the file is empty")
            raise UserError("OpenPGP file is truncated: no encrypted data after the session key packets",
                            code="truncated")
        if header.tag == TAG_SKESK:
            read_body(stream, header)
            symmetric = True
        elif header.tag == TAG_MARKER:
            read_body(stream, header)
        elif header.tag == TAG_SEIPD:
            if not recipients and not symmetric:
                raise _not_openpgp("the encrypted data has no session key packet")
            return Envelope(recipients, symmetric, header)
        elif header.tag == TAG_SED:
            raise UserError("refused: the file uses the legacy Symmetrically Encrypted Data packet (tag 9) "
                            "without integrity protection; re-encrypt it with a current gpg (MDC enabled)",
                            code="legacy_sed")
        elif header.tag == TAG_AEAD:
            raise UserError("unsupported OpenPGP AEAD (OCB) encrypted data packet (tag 20, written by gpg >= 2.3); "
                            "re-encrypt it with gpg --rfc4880", code="unsupported_packet")
        elif first:
            if header.tag in (TAG_LITERAL, TAG_COMPRESSED, TAG_ONE_PASS_SIGNATURE, TAG_SIGNATURE):
                raise _not_openpgp(f"it is an unencrypted OpenPGP message (starts with a {header.name} packet)")
            if header.tag in (5, 6):
                raise _not_openpgp(f"it is an OpenPGP key (starts with a {header.name} packet)")
            raise _not_openpgp(f"it starts with a {header.name} packet")
        else:
            raise UserError(f"OpenPGP file is not valid: unexpected {header.name} packet among the session keys",
                            code="bad_structure")
        first = False


def _parse_pkesk(body: bytes) -> Recipient:
    if len(body) < 10:
        raise UserError("public-key encrypted session key packet is too short", code="bad_structure")
    version = body[0]
    if version != 3:
        raise UserError(f"unsupported public-key encrypted session key packet version {version} "
                        f"(only version 3, RFC 4880, is supported)", code="unsupported_packet")
    return Recipient(body[1:9].hex().upper(), body[9], body)


def recipient_key_ids(src: BinaryIO | str | Path) -> list[str]:
    """Key ids the file's session key was encrypted to, in file order (reads only the first packets).

    The caller decides which one it holds; an id of sixteen zeros means the
    sender hid the recipient (``gpg --throw-keyids``) and any key may fit.
    """
    if isinstance(src, (str, Path)):
        with open(src, "rb") as fh:
            return recipient_key_ids(fh)
    stream = ChunkStream(chunks_from_file(src), "OpenPGP file")
    envelope = read_envelope(stream)
    if not envelope.recipients:
        raise UserError("the file is encrypted with a passphrase (gpg -c), not to the archive's public key",
                        code="passphrase_encrypted")
    return [r.key_id for r in envelope.recipients]


# ---------------------------------------------------------------- private key


@dataclass(frozen=True)
class SessionKey:
    algorithm: int
    key: bytes
    key_id: str  # the PKESK recipient it was decrypted from

    @property
    def cipher(self) -> str:
        return CIPHER_NAMES.get(self.algorithm, f"algorithm {self.algorithm}")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.key).hexdigest()


class OpenPGPPrivateKey:
    """An archive private key (pgpy) that can open PKESK packets addressed to it or its subkeys.

    pgpy's own S2K builds the whole iterated salt+passphrase string in memory
    (65 MB for gpg's usual count, and again on every ``unlock``), which would
    dominate the pass's peak RSS; the derivation below hashes the same bytes from
    one 64 KiB block instead. Each (sub)key's secret material is unlocked once, when
    first needed: every part has its own S2K (~45 ms at gpg's count), and a file is
    encrypted to one of them (gpg's: the encryption subkey, never the certifying
    primary). That subkey, or the primary of a key without subkeys, is unlocked
    here, so a wrong passphrase is still found when the key is loaded.
    """

    def __init__(self, key: Any, passphrase: str | None) -> None:
        if key.is_public:
            raise ValueError("an OpenPGP public key was given where the private key is needed")
        self.pgpy_key = key
        self._lock = threading.Lock()  # pgpy key objects are not documented as thread-safe
        self._by_id = {key.fingerprint.keyid.upper(): key}
        for sub_id, sub in key.subkeys.items():
            self._by_id[sub_id.upper()] = sub
        self._passphrase = passphrase
        self._protected: set[str] = set()
        if key.is_protected:
            if not passphrase:
                raise ValueError(f"OpenPGP private key {key.fingerprint.keyid} is protected and no passphrase was given")
            self._protected = set(self._by_id)
            first = next(iter(key.subkeys.values()), key)
            self._unlock(first)
        self._rsa: dict[str, Any] = {}

    def _unlock(self, part: Any) -> None:
        keyid = part.fingerprint.keyid.upper()
        if keyid in self._protected:
            _unprotect(part, self._passphrase or "")
            self._protected.discard(keyid)

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    @property
    def fingerprint(self) -> str:
        return str(self.pgpy_key.fingerprint).replace(" ", "")

    def holds(self, recipient: Recipient) -> bool:
        return recipient.anonymous or recipient.key_id in self._by_id

    def decrypt_session_key(self, recipient: Recipient) -> SessionKey:
        """Open one PKESK. A failure on a packet addressed to us means the file is broken: UserError."""
        from pgpy.packet import Packet

        if recipient.anonymous:
            candidates = [k for k in self._by_id.values() if k.key_algorithm.value == recipient.algorithm]
        else:
            candidates = [self._by_id[recipient.key_id]] if recipient.key_id in self._by_id else []
        if not candidates:
            raise UserError(f"encrypted with an unrelated key ({recipient.key_id})", code="unrelated_key")
        body = recipient.body
        framed = bytearray([0xC0 | TAG_PKESK, 0xFF]) + len(body).to_bytes(4, "big") + body
        last: Exception | None = None
        with self._lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            packet = Packet(framed)
            for candidate in candidates:
                self._unlock(candidate)  # (a wrong passphrase: ValueError, as at load)
                try:
                    if recipient.algorithm in (1, 2):  # RSA: see _rsa_session_key
                        algorithm, key = self._rsa_session_key(candidate, body)
                    else:
                        algorithm, key = packet.decrypt_sk(candidate._key)
                    return SessionKey(int(algorithm), bytes(key), recipient.key_id)
                except NotImplementedError as exc:
                    raise UserError(f"unsupported public-key algorithm {recipient.algorithm} in the session key "
                                    f"packet", code="unsupported_cipher") from exc
                except Exception as exc:  # PGPDecryptionError, padding errors, unknown cipher id (ValueError)
                    last = exc
        raise UserError(f"the session key for key {recipient.key_id} could not be decrypted: {last}",
                        code="bad_session_key")


    def _rsa_session_key(self, part: Any, body: bytes) -> tuple[int, bytes]:
        """RSA PKESK (RFC 4880 §5.1): EME-PKCS1-v1_5 of ``algo || key || checksum``.

        Done with ``cryptography`` on a key object built once per (sub)key:
        pgpy rebuilds and re-validates the RSA key twice per message (~0.1 s
        each at 4096 bits). Our own keys are trusted, so the primality
        checks of the validation are skipped.
        """
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        keyid = part.fingerprint.keyid
        private = self._rsa.get(keyid)
        if private is None:
            km = part._key.keymaterial
            p, q, d = int(km.p), int(km.q), int(km.d)
            public = rsa.RSAPublicNumbers(int(km.e), int(km.n))
            numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                            rsa.rsa_crt_iqmp(p, q), public)
            private = numbers.private_key(unsafe_skip_rsa_key_validation=True)
            self._rsa[keyid] = private
        if len(body) < 12:
            raise ValueError("RSA session key packet is too short")
        bits = int.from_bytes(body[10:12], "big")
        ciphertext = body[12:12 + (bits + 7) // 8]
        size = (private.key_size + 7) // 8
        if len(ciphertext) > size:
            raise ValueError("RSA ciphertext longer than the modulus")
        m = private.decrypt(ciphertext.rjust(size, b"\x00"), padding.PKCS1v15())
        if len(m) < 4 or sum(m[1:-2]) % 65536 != int.from_bytes(m[-2:], "big"):
            raise ValueError("session key checksum mismatch")
        return m[0], m[1:-2]


def _unprotect(part: Any, passphrase: str) -> None:
    """Decrypt one key packet's secret material in place, with the streaming S2K."""
    packet = part._key
    s2k = getattr(packet.keymaterial, "s2k", None)
    if s2k is not None and s2k.usage in (254, 255):
        s2k.derive_key = lambda pw, _s2k=s2k: _derive_s2k(_s2k, pw)  # instance-level: this key only
    try:
        packet.unprotect(passphrase)
    except Exception as exc:  # pgpy raises PGPDecryptionError
        raise ValueError(f"wrong passphrase for OpenPGP private key {part.fingerprint.keyid}") from exc


def _derive_s2k(s2k: Any, passphrase: str | bytes) -> bytes:
    """RFC 4880 §3.7.1 simple / salted / iterated+salted S2K, hashing in constant memory."""
    secret = passphrase if isinstance(passphrase, bytes) else passphrase.encode("utf-8")
    unit = (bytes(s2k.salt) if int(s2k.specifier) >= 1 else b"") + secret
    count = len(unit)
    if int(s2k.specifier) == 3:
        count = max(count, s2k.count)
    keylen = s2k.encalg.key_size // 8
    block = unit * max(1, (64 << 10) // max(1, len(unit)))
    out = b""
    preload = 0
    while len(out) < keylen:
        h = s2k.halg.hasher
        h.update(b"\x00" * preload)
        left = count
        while left >= len(block):
            h.update(block)
            left -= len(block)
        if left:
            h.update(block[:left])
        out += h.digest()
        preload += 1
    return out[:keylen]


def choose_recipient(envelope: Envelope, keys: OpenPGPPrivateKey) -> Recipient:
    """The PKESK this key can open, preferring a named one over an anonymous one."""
    named = [r for r in envelope.recipients if not r.anonymous and keys.holds(r)]
    anonymous = [r for r in envelope.recipients if r.anonymous and keys.holds(r)]
    if named or anonymous:
        return (named or anonymous)[0]
    if not envelope.recipients:
        raise UserError("the file is encrypted with a passphrase (gpg -c), not to the archive's public key",
                        code="passphrase_encrypted")
    ids = ", ".join(r.key_id for r in envelope.recipients)
    raise UserError(f"encrypted with an unrelated key ({ids})", code="unrelated_key")


# ---------------------------------------------------------------- SEIPD


def _aes(session: SessionKey) -> tuple[algorithms.AES, int]:
    spec = AES_KEY_SIZES.get(session.algorithm)
    if spec is None:
        raise UserError(f"unsupported cipher {session.cipher}: only AES-128, AES-192 and AES-256 are accepted "
                        f"(gpg --cipher-algo AES256)", code="unsupported_cipher")
    if len(session.key) != spec[1]:
        raise UserError(f"session key has {len(session.key)} bytes, {spec[0]} needs {spec[1]}",
                        code="bad_session_key")
    return algorithms.AES(session.key), 16


def decrypt_seipd(body: Iterator[Chunk], session: SessionKey, *, pool: BufferPool | None = None,
                  mdc: DigestTap | None = None, block_size: int = 1 << 20) -> Iterator[Chunk]:
    """Decrypt a SEIPD v1 body; yields the inner packet stream, then verifies the MDC.

    Body pieces (gpg's partial lengths are 8 KiB) are decrypted back to back
    into one pooled buffer until it is full, so consumers see large chunks.
    The last 22 decrypted bytes can only be known to be the MDC packet once the
    body ends, so each buffer holds back its last 22 bytes and the next buffer
    starts with them (``pool`` buffers need ``RESERVE`` bytes of slack in
    front). The MDC verdict comes when the consumer pulls past the last chunk:
    a consumer must drain this generator before trusting anything.
    """
    algo, bs = _aes(session)
    mdc = mdc or InlineDigest("sha1")
    decryptor = Cipher(algo, CFB(bytes(bs))).decryptor()
    if pool is None:
        pool = BufferPool(2, block_size, slack=SEIPD_SLACK)
    step = pool.size
    it = iter(body)
    try:
        data0, _ = next(it)
    except StopIteration:
        raise UserError("OpenPGP file is truncated: the encrypted data packet is empty", code="truncated") from None
    if not len(data0):
        raise UserError("OpenPGP file is truncated: the encrypted data packet is empty", code="truncated")
    if data0[0] != 1:
        raise UserError(f"unsupported encrypted data packet version {data0[0]} (only SEIPD version 1, RFC 4880; "
                        f"re-encrypt with gpg 2.2 or gpg --rfc4880)", code="unsupported_packet")
    prefix = bytearray()
    need_prefix = bs + 2
    tail = b""

    def emit(buf: Buffer, fill: int) -> Iterator[Chunk]:
        """Yield ``tail + data[:fill]`` minus its last 22 bytes; keep those as the new tail."""
        nonlocal tail, need_prefix
        try:
            if fill >= MDC_TRAILER:
                start = RESERVE - len(tail)
                buf.view[start:RESERVE] = tail
                chunk: Any = buf.view[start:RESERVE + fill - MDC_TRAILER]
                owner: Buffer | None = buf
                tail = bytes(buf.view[RESERVE + fill - MDC_TRAILER:RESERVE + fill])
            else:
                joined = tail + bytes(buf.view[RESERVE:RESERVE + fill])
                chunk, owner = joined[:-MDC_TRAILER], None
                tail = joined[-MDC_TRAILER:]
            if not len(chunk):
                return
            mdc.update(chunk, owner)
            if need_prefix:
                take = min(need_prefix, len(chunk))
                prefix.extend(chunk[:take])
                need_prefix -= take
                chunk = chunk[take:]
                if not need_prefix and prefix[bs - 2:bs] != prefix[bs:bs + 2]:
                    raise UserError("the session key does not decrypt this file (quick check failed): "
                                    "corrupt file or wrong key", code="bad_session_key")
                if not len(chunk):
                    return
            yield chunk, owner
        finally:
            buf.release()

    def pieces() -> Iterator[Any]:
        if len(data0) > 1:
            yield data0[1:]
        for data, _owner in it:
            yield data

    buf: Buffer | None = None
    fill = 0
    for data in pieces():
        view = data if isinstance(data, memoryview) else memoryview(data)
        pos = 0
        while pos < len(view):
            if buf is None:
                buf, fill = pool.get(), 0
            take = min(len(view) - pos, step - fill)
            fill += decryptor.update_into(view[pos:pos + take], buf.view[RESERVE + fill:])
            pos += take
            if fill == step:
                full, buf = buf, None
                yield from emit(full, fill)
    if buf is not None:
        yield from emit(buf, fill)
    if need_prefix or len(tail) < MDC_TRAILER:
        raise UserError("OpenPGP file is truncated: the encrypted data is shorter than its integrity trailer",
                        code="truncated")
    if tail[:2] != b"\xd3\x14":
        raise UserError("integrity check failed: the modification detection code packet is missing "
                        "(file truncated or modified)", code="mdc_mismatch")
    mdc.update(tail[:2], None)
    if mdc.digest() != tail[2:]:
        raise UserError("integrity check failed: modification detection code mismatch "
                        "(the encrypted file was modified, corrupted or truncated)", code="mdc_mismatch")


def coalesce(chunks: Iterator[Chunk], pool: BufferPool, min_size: int = 2 * _INFLATE_PIECE) -> Iterator[Chunk]:
    """Pass large chunks through; copy runs of small ones into pooled buffers.

    gpg's partial body lengths cut a piped file into 8 KiB pieces, and inflate
    yields pieces of at most ``_INFLATE_PIECE``; handing each to several worker
    threads would cost more than the work itself.
    """
    buf: Buffer | None = None
    fill = 0
    try:
        for data, owner in chunks:
            n = len(data)
            if n >= min_size:
                if buf is not None:
                    yield buf.view[:fill], buf
                    buf.release()
                    buf = None
                yield data, owner
                continue
            if buf is not None and fill + n > pool.size:
                yield buf.view[:fill], buf
                buf.release()
                buf = None
            if buf is None:
                buf, fill = pool.get(), 0
            buf.view[fill:fill + n] = data
            fill += n
        if buf is not None and fill:
            yield buf.view[:fill], buf
    finally:
        if buf is not None:
            buf.release()


# ---------------------------------------------------------------- inner message


@dataclass
class LiteralInfo:
    format: str = ""
    filename: str = ""
    timestamp: int = 0
    compression: str = "uncompressed"
    signed: bool = False


def _inflate(chunks: Iterator[Chunk], algorithm: int) -> Iterator[Chunk]:
    if algorithm in (1, 2):
        d = _deflate.decompressobj(-15 if algorithm == 1 else 15)
        for data, _ in chunks:
            view = memoryview(data)
            for start in range(0, len(view), _INFLATE_PIECE):
                piece: Any = view[start:start + _INFLATE_PIECE]
                while piece and not d.eof:  # bytes after the end of the deflate stream are ignored, as gpg does
                    try:
                        out = d.decompress(piece, _INFLATE_PIECE)
                    except _INFLATE_ERRORS as exc:
                        raise UserError(f"corrupt {COMPRESSION_NAMES[algorithm]} compressed data: {exc}",
                                        code="corrupt_compression") from exc
                    if out:
                        yield out, None
                    piece = d.unconsumed_tail
        if not d.eof:
            try:
                out = d.flush()
            except _INFLATE_ERRORS as exc:
                raise UserError(f"corrupt compressed data: {exc}", code="corrupt_compression") from exc
            if out:
                yield out, None
            if algorithm == 2 or not d.eof:
                raise UserError(f"{COMPRESSION_NAMES[algorithm]} compressed data is truncated", code="truncated")
        return
    if algorithm == 3:
        d = bz2.BZ2Decompressor()
        for data, _ in chunks:
            buf: Any = data
            while not d.eof:
                try:
                    out = d.decompress(buf, _INFLATE_PIECE)
                except (OSError, ValueError, EOFError) as exc:
                    raise UserError(f"corrupt BZip2 compressed data: {exc}", code="corrupt_compression") from exc
                if out:
                    yield out, None
                buf = b""
                if d.needs_input:
                    break
        if not d.eof:
            raise UserError("BZip2 compressed data is truncated", code="truncated")
        return
    if algorithm == 0:
        yield from chunks
        return
    raise UserError(f"unsupported compression algorithm {algorithm}", code="unsupported_compression")


def literal_data(stream: ChunkStream, info: LiteralInfo, *, depth: int = 0,
                 block_size: int = 1 << 20) -> Iterator[Chunk]:
    """The literal packet's data from a decrypted packet sequence; every other packet is consumed too.

    The whole sequence is read to its end, so a caller that exhausts this
    generator has also exhausted (and thereby MDC-checked) the decryption.
    """
    found = False
    while True:
        header = read_header(stream)
        if header is None:
            break
        if header.tag == TAG_LITERAL:
            if found:
                raise UserError("the encrypted data holds more than one literal data packet", code="bad_structure")
            found = True
            body = ChunkStream(body_chunks(stream, header, block_size), stream.what)
            fmt = body.read_exact(1, "literal data header")
            name_len = body.read_exact(1, "literal data header")[0]
            name = body.read_exact(name_len, "literal data header") if name_len else b""
            stamp = body.read_exact(4, "literal data header")
            info.format = fmt.decode("latin-1")
            info.filename = name.decode("utf-8", "replace")
            info.timestamp = int.from_bytes(stamp, "big")
            yield from body.rest(block_size)
        elif header.tag == TAG_COMPRESSED:
            if depth >= _MAX_COMPRESSION_DEPTH:
                raise UserError("compressed data nested too deeply", code="bad_structure")
            body = ChunkStream(body_chunks(stream, header, block_size), stream.what)
            algorithm = body.read_exact(1, "compressed data header")[0]
            info.compression = COMPRESSION_NAMES.get(algorithm, str(algorithm))
            inner = ChunkStream(_inflate(body.rest(block_size), algorithm), stream.what)
            for chunk in literal_data(inner, info, depth=depth + 1, block_size=block_size):
                found = True
                yield chunk
            if not info.format:
                raise UserError("the compressed data holds no literal data packet", code="bad_structure")
            found = True
        elif header.tag in (TAG_ONE_PASS_SIGNATURE, TAG_SIGNATURE):
            info.signed = True
            skip_body(stream, header)
        elif header.tag in (TAG_MARKER, TAG_PADDING):
            skip_body(stream, header)
        else:
            raise UserError(f"unexpected {header.name} packet inside the encrypted data", code="bad_structure")
    if not found and depth == 0:
        raise UserError("the encrypted data holds no literal data packet", code="bad_structure")


# ---------------------------------------------------------------- whole file, single thread


@dataclass
class Decryption:
    """State of one streaming decryption, filled in as the stream is consumed."""

    envelope: Envelope | None = None
    session: SessionKey | None = None
    literal: LiteralInfo | None = None


def decrypt_chunks(raw: Iterator[Chunk], private_key: OpenPGPPrivateKey, *, pool: BufferPool | None = None,
                   mdc: DigestTap | None = None, state: Decryption | None = None,
                   on_session_key: Callable[[SessionKey], None] | None = None,
                   batch_pool: BufferPool | None = None, block_size: int = 1 << 20) -> Iterator[Chunk]:
    """Plaintext chunks of an OpenPGP file given as raw chunks; raises UserError on any bad input.

    ``pool`` holds the decrypted buffers (``SEIPD_SLACK`` bytes of slack);
    with ``batch_pool``, small literal pieces are gathered into its buffers.
    When the generator is exhausted the MDC has been verified and the file was
    read to its end (bytes after the encrypted packet are refused).
    """
    state = state if state is not None else Decryption()
    stream = ChunkStream(raw, "OpenPGP file")
    envelope = read_envelope(stream)
    state.envelope = envelope
    recipient = choose_recipient(envelope, private_key)
    session = private_key.decrypt_session_key(recipient)
    _aes(session)  # refuse a non-AES cipher before any output is produced
    state.session = session
    if on_session_key is not None:
        on_session_key(session)
    plain = decrypt_seipd(body_chunks(stream, envelope.data_header, block_size), session, pool=pool, mdc=mdc,
                          block_size=block_size)
    inner = ChunkStream(plain, "decrypted data")
    state.literal = LiteralInfo()
    try:
        literal = literal_data(inner, state.literal, block_size=block_size)
        yield from (coalesce(literal, batch_pool) if batch_pool is not None else literal)
    except UserError as exc:
        if exc.code == "mdc_mismatch":
            raise
        # A tampered byte garbles the packets after it; say so if the MDC agrees.
        _drain_for_mdc(inner, exc)
        raise
    if not stream.at_eof():
        raise UserError("OpenPGP file has trailing data after the encrypted data packet", code="bad_structure")


def _drain_for_mdc(inner: ChunkStream, original: UserError) -> None:
    try:
        for _ in inner.rest():
            pass
    except UserError as mdc_error:
        if mdc_error.code in ("mdc_mismatch", "truncated"):
            raise mdc_error from original
