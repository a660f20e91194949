"""Crypt4GH writer: the header, and a segment encryptor built on raw ChaCha20-Poly1305.

GA4GH Crypt4GH v1, as the reference ``crypt4gh`` CLI reads it:

* header: ``b"crypt4gh"``, version 1 (u32 LE), packet count (u32 LE), then per
  packet its length (u32 LE, counting itself) and body;
* a packet body for one reader: method 0 (u32 LE, X25519 + ChaCha20-Poly1305),
  the writer's public key (32), nonce (12), then the sealed payload + MAC (16).
  The key is ``BLAKE2b-512(X25519(writer_sk, reader_pk) || reader_pk || writer_pk)[:32]``,
  libsodium ``crypto_kx``'s server transmit key, which is what the reference uses
  (checked against ``crypt4gh.sodium.kx_server``);
* the data-encryption-parameters payload: type 0 (u32 LE), method 0 (u32 LE,
  chacha20_ietf_poly1305) and the 32-byte data key;
* data: 64 KiB plaintext segments, each stored as nonce(12) + ciphertext + tag(16);
  the last one is shorter, and an empty plaintext has no segment at all.

The writer key pair is ephemeral and discarded (as ``crypt4gh encrypt`` does
without ``--sk``): only the reader's secret key opens the header.

The reference package's ``lib.encrypt`` spends most of its time in Python and
allocation per segment (~250 MB/s). Here the nonces of a whole batch come from
one ``os.urandom`` call and each segment is sealed with ``encrypt_into``
straight into a reused output buffer, so the loop allocates nothing and runs
at the AEAD's speed.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAGIC = b"crypt4gh"
VERSION = 1
SEGMENT_SIZE = 64 << 10
NONCE_SIZE = 12
MAC_SIZE = 16
CIPHER_DIFF = NONCE_SIZE + MAC_SIZE
CIPHER_SEGMENT_SIZE = SEGMENT_SIZE + CIPHER_DIFF
KEY_SIZE = 32
_HAS_ENCRYPT_INTO = hasattr(ChaCha20Poly1305, "encrypt_into")

_HEADER_X25519_CHACHA20 = 0  # header packet encryption method
_PACKET_DATA_ENC = 0  # header packet type: data encryption parameters
_DATA_CHACHA20 = 0  # data encryption method


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def derive_public_key(secret_key: bytes) -> bytes:
    """X25519 public key of a raw 32-byte secret key (same clamping as libsodium)."""
    return X25519PrivateKey.from_private_bytes(bytes(secret_key)).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def shared_key(writer_secret: bytes, reader_public: bytes) -> bytes:
    """The header-packet key; the reader derives the same one from its secret and the writer's public key."""
    writer = X25519PrivateKey.from_private_bytes(bytes(writer_secret))
    dh = writer.exchange(X25519PublicKey.from_public_bytes(bytes(reader_public)))
    writer_public = writer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.blake2b(dh + bytes(reader_public) + writer_public, digest_size=64).digest()[:KEY_SIZE]


def make_header(data_key: bytes, readers: Iterable[bytes]) -> bytes:
    """Serialized header giving every reader (raw 32-byte X25519 public key) the data key."""
    if len(data_key) != KEY_SIZE:
        raise ValueError("the Crypt4GH data key must be 32 bytes")
    payload = _u32(_PACKET_DATA_ENC) + _u32(_DATA_CHACHA20) + bytes(data_key)
    packets = []
    for reader in readers:
        if len(reader) != KEY_SIZE:
            raise ValueError("a Crypt4GH public key is 32 raw bytes")
        writer_secret = os.urandom(KEY_SIZE)
        nonce = os.urandom(NONCE_SIZE)
        sealed = ChaCha20Poly1305(shared_key(writer_secret, reader)).encrypt(nonce, payload, None)
        body = _u32(_HEADER_X25519_CHACHA20) + derive_public_key(writer_secret) + nonce + sealed
        packets.append(_u32(len(body) + 4) + body)
    if not packets:
        raise ValueError("at least one reader public key is required")
    return MAGIC + _u32(VERSION) + _u32(len(packets)) + b"".join(packets)


def encrypted_size(plaintext_size: int, header_size: int) -> int:
    """Size of the Crypt4GH file for ``plaintext_size`` bytes of plaintext."""
    segments = -(-plaintext_size // SEGMENT_SIZE)
    return header_size + plaintext_size + segments * CIPHER_DIFF


class SegmentEncryptor:
    """Turns a plaintext stream into sealed 64 KiB segments in caller-owned buffers.

    Plaintext may arrive in chunks of any size; a short remainder is carried
    (copied into one 64 KiB buffer) until the next chunk completes it, so
    segment boundaries depend only on the byte offset, never on how the input
    was cut.
    """

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != KEY_SIZE:
            raise ValueError("the Crypt4GH data key must be 32 bytes")
        self._aead = ChaCha20Poly1305(bytes(data_key))
        self._carry = memoryview(bytearray(SEGMENT_SIZE))
        self._carry_len = 0
        self.plaintext_size = 0

    @staticmethod
    def max_output(nbytes: int) -> int:
        """Output bound of ``encrypt_into`` for ``nbytes`` more input (carry included)."""
        return (nbytes // SEGMENT_SIZE + 1) * CIPHER_SEGMENT_SIZE

    def _seal(self, segment: memoryview, nonce: bytes, out: memoryview, at: int) -> int:
        end = at + NONCE_SIZE + len(segment) + MAC_SIZE
        out[at:at + NONCE_SIZE] = nonce
        if _HAS_ENCRYPT_INTO:
            self._aead.encrypt_into(nonce, segment, None, out[at + NONCE_SIZE:end])
        else:  # older cryptography: one allocation per segment
            out[at + NONCE_SIZE:end] = self._aead.encrypt(nonce, bytes(segment), None)
        return end

    def encrypt_into(self, data: bytes | bytearray | memoryview, out: bytearray | memoryview) -> int:
        """Seal every segment ``data`` completes into ``out``; returns the bytes written."""
        view = memoryview(data)
        out = memoryview(out)
        n = len(view)
        self.plaintext_size += n
        pos = at = 0
        if self._carry_len:
            take = min(SEGMENT_SIZE - self._carry_len, n)
            self._carry[self._carry_len:self._carry_len + take] = view[:take]
            self._carry_len += take
            pos = take
            if self._carry_len < SEGMENT_SIZE:
                return 0
            at = self._seal(self._carry, os.urandom(NONCE_SIZE), out, at)
            self._carry_len = 0
        full = (n - pos) // SEGMENT_SIZE
        if full:
            nonces = os.urandom(NONCE_SIZE * full)
            for i in range(full):
                at = self._seal(view[pos:pos + SEGMENT_SIZE], nonces[i * NONCE_SIZE:(i + 1) * NONCE_SIZE], out, at)
                pos += SEGMENT_SIZE
        if pos < n:
            self._carry[:n - pos] = view[pos:]
            self._carry_len = n - pos
        return at

    def finish_into(self, out: bytearray | memoryview) -> int:
        """Seal the short last segment, if any (at most ``CIPHER_SEGMENT_SIZE`` bytes)."""
        if not self._carry_len:
            return 0
        n = self._seal(self._carry[:self._carry_len], os.urandom(NONCE_SIZE), memoryview(out), 0)
        self._carry_len = 0
        return n


def encrypt_stream(src: BinaryIO, dst: BinaryIO, readers: Iterable[bytes], *, block_size: int = 1 << 20) -> int:
    """Serial Crypt4GH encryption of a whole stream; returns the bytes written.

    The plain tool (and the benchmark's like-for-like contender against
    ``crypt4gh.lib.encrypt``); the EGA pipeline drives ``SegmentEncryptor``
    from its own threads instead.
    """
    block_size = max(SEGMENT_SIZE, block_size - block_size % SEGMENT_SIZE)
    data_key = os.urandom(KEY_SIZE)
    header = make_header(data_key, readers)
    dst.write(header)
    written = len(header)
    enc = SegmentEncryptor(data_key)
    inbuf = bytearray(block_size)
    inview = memoryview(inbuf)
    out = memoryview(bytearray(SegmentEncryptor.max_output(block_size)))
    readinto = getattr(src, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(inbuf)
        else:
            chunk = src.read(block_size)
            n = len(chunk)
            inview[:n] = chunk
        if not n:
            break
        k = enc.encrypt_into(inview[:n], out)
        dst.write(out[:k])
        written += k
    k = enc.finish_into(out)
    if k:
        dst.write(out[:k])
        written += k
    return written
