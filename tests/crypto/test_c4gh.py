"""Our Crypt4GH writer against the reference implementation (CLI and the package's header parser)."""
from __future__ import annotations

import io
import os
import random

import pytest
from crypt4gh import header as ref_header

from tasks.c4gh import (CIPHER_SEGMENT_SIZE, SEGMENT_SIZE, SegmentEncryptor, derive_public_key, encrypt_stream,
                        encrypted_size, make_header)
from tasks.keys import load_c4gh_private_key

from crypto_helpers import PASSPHRASE, file_digest


@pytest.mark.parametrize("size", [0, 1, SEGMENT_SIZE - 1, SEGMENT_SIZE, SEGMENT_SIZE + 1, 3 * SEGMENT_SIZE + 5])
def test_segment_boundaries_decrypt_with_the_cli(tmp_path, archive_keys, c4gh_decrypt, size):
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    out = tmp_path / "out.c4gh"
    with open(plain, "rb") as src, open(out, "wb") as dst:
        written = encrypt_stream(src, dst, [archive_keys.vault_public_key], block_size=100_000)
    assert written == out.stat().st_size
    header_len = len(make_header(os.urandom(32), [archive_keys.vault_public_key]))
    assert written == encrypted_size(size, header_len)
    assert c4gh_decrypt(out) == file_digest(plain, "sha256")


def test_chunking_does_not_move_segment_boundaries(tmp_path, archive_keys, c4gh_decrypt):
    data = os.urandom(5 * SEGMENT_SIZE + 123)
    key = os.urandom(32)
    enc = SegmentEncryptor(key)
    out = bytearray()
    buf = memoryview(bytearray(SegmentEncryptor.max_output(len(data))))
    rng = random.Random(7)
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 17, 4096, SEGMENT_SIZE - 3, SEGMENT_SIZE, 2 * SEGMENT_SIZE + 9])
        n = enc.encrypt_into(data[pos:pos + step], buf)
        out += buf[:n]
        pos += step
    out += buf[:enc.finish_into(buf)]
    # Every sealed segment but the last is a full one, whatever the input chunking was.
    assert len(out) == 5 * CIPHER_SEGMENT_SIZE + 123 + 28
    path = tmp_path / "chunked.c4gh"
    path.write_bytes(make_header(key, [archive_keys.vault_public_key]) + bytes(out))
    (tmp_path / "plain").write_bytes(data)
    assert c4gh_decrypt(path) == file_digest(tmp_path / "plain", "sha256")


def test_header_opens_with_the_reference_parser_for_every_reader(archive_keys):
    other_secret = os.urandom(32)
    data_key = os.urandom(32)
    hdr = make_header(data_key, [archive_keys.vault_public_key, derive_public_key(other_secret)])
    vault_secret = load_c4gh_private_key(archive_keys.c4gh_sec, PASSPHRASE)
    assert derive_public_key(vault_secret) == archive_keys.vault_public_key
    for secret in (vault_secret, other_secret):
        session_keys, edit_list = ref_header.deconstruct(io.BytesIO(hdr), [(0, secret, None)])
        assert session_keys == [data_key] and edit_list is None
    with pytest.raises(ValueError):
        ref_header.deconstruct(io.BytesIO(hdr), [(0, os.urandom(32), None)])


def test_rejects_bad_keys():
    with pytest.raises(ValueError):
        make_header(os.urandom(31), [os.urandom(32)])
    with pytest.raises(ValueError):
        make_header(os.urandom(32), [os.urandom(16)])
    with pytest.raises(ValueError):
        make_header(os.urandom(32), [])
