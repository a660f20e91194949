"""LocalEGA's public OpenPGP test vector (EGA-archive/LocalEGA, tests/openpgp_data.py).

An RSA 4096 key (primary key encrypts, no subkey) with passphrase ``crazywow``,
and a 611-byte message produced outside this project: old-format PKESK header
(ctb 0x85), AES-256, ZLIB compression. The vector publishes the plaintext
``b"Hello PyTest\\n"``, the key id and the session key.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from tasks.crypto import reencrypt
from tasks.keys import load_pgp_private_key
from tasks.openpgp import ChunkStream, chunks_from_file, decrypt_chunks, read_envelope, recipient_key_ids

DATA = Path(__file__).parent / "data"
PASSPHRASE = "crazywow"
KEY_ID = "E52C3CABC7888695"
FINGERPRINT = "06BDD208BB2D709AC3542B57E52C3CABC7888695"
PLAINTEXT = b"Hello PyTest\n"
SESSION_KEY = "92336327AE4ADCD7D0989B9F216CBACCA63AAB9E64DC4C95B74D3CEF130C3764"  # algo 9 = AES-256


@pytest.fixture(scope="module")
def vector():
    key = load_pgp_private_key((DATA / "localega_sec.asc").read_text(), PASSPHRASE)
    message = bytes.fromhex((DATA / "localega_msg.hex").read_text().strip())
    return key, message


def test_key_and_recipient(vector):
    key, message = vector
    assert key.fingerprint == FINGERPRINT and KEY_ID in key.key_ids
    assert recipient_key_ids(io.BytesIO(message)) == [KEY_ID]
    assert message[0] == 0x85  # old-format header, tag 1, two-octet length
    envelope = read_envelope(ChunkStream(chunks_from_file(io.BytesIO(message))))
    assert envelope.data_header.tag == 18


def test_decrypts_to_the_published_plaintext(vector):
    key, message = vector
    plain = b"".join(bytes(chunk) for chunk, _ in decrypt_chunks(chunks_from_file(io.BytesIO(message)), key))
    assert plain == PLAINTEXT


def test_reencrypt(tmp_path, vector, archive_keys, c4gh_decrypt):
    key, message = vector
    out = tmp_path / "hello.c4gh"
    with open(out, "wb") as dst:
        result = reencrypt(io.BytesIO(message), dst, key, archive_keys.vault_public_key)
    assert result.plaintext.size == len(PLAINTEXT)
    assert result.plaintext.checksums == {"sha256": hashlib.sha256(PLAINTEXT).hexdigest(),
                                          "md5": hashlib.md5(PLAINTEXT).hexdigest()}
    assert result.encrypted.checksums["sha256"] == hashlib.sha256(message).hexdigest()
    assert result.session_key_sha256 == hashlib.sha256(bytes.fromhex(SESSION_KEY)).hexdigest()
    assert (result.key_id, result.cipher, result.compression) == (KEY_ID, "AES-256", "ZLIB")
    assert c4gh_decrypt(out) == hashlib.sha256(PLAINTEXT).hexdigest()


def test_wrong_passphrase_is_a_configuration_error():
    with pytest.raises(ValueError, match="wrong passphrase"):
        load_pgp_private_key((DATA / "localega_sec.asc").read_text(), "not-it")
