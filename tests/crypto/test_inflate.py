"""Compressed OpenPGP data (ZIP = raw deflate, ZLIB) inflates through ISA-L when ``isal`` is installed, as it
is here; without it through zlib. Both must give the same bytes and the same submitter errors for a good
stream, bytes after its end, a truncated stream, a bad ZLIB check value and flipped bits."""
from __future__ import annotations

import random
import zlib

import pytest

from tasks import openpgp
from tasks.errors import UserError


def test_the_fast_inflate_is_installed() -> None:
    assert "isal" in openpgp._deflate.__name__, "isal (a project dependency) is not installed"


def _streams() -> dict[str, tuple[int, bytes, bytes]]:
    rnd = random.Random(7)
    plain = b"".join(rnd.choice([b"ACGT" * 60, rnd.randbytes(300), b"\n@read 1\n+\n"]) for _ in range(12000))
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    zip_stream = raw.compress(plain) + raw.flush()
    zlib_stream = zlib.compress(plain, 6)
    cases: dict[str, tuple[int, bytes, bytes]] = {}
    for algorithm, stream in ((1, zip_stream), (2, zlib_stream)):
        name = {1: "zip", 2: "zlib"}[algorithm]
        cases[f"{name}-good"] = (algorithm, stream, plain)
        cases[f"{name}-trailing"] = (algorithm, stream + b"after the end", plain)
        cases[f"{name}-truncated"] = (algorithm, stream[:len(stream) * 2 // 3], plain)
        for i in range(12):
            bad = bytearray(stream)
            bad[rnd.randrange(len(bad))] ^= 1 << rnd.randrange(8)
            cases[f"{name}-flip{i}"] = (algorithm, bytes(bad), plain)
    bad_check = bytearray(zlib_stream)
    bad_check[-1] ^= 0x01
    cases["zlib-bad-check"] = (2, bytes(bad_check), plain)
    return cases


def _inflate(algorithm: int, stream: bytes) -> tuple[str, bytes]:
    chunks = ((stream[i:i + 65536], None) for i in range(0, len(stream), 65536))
    out = bytearray()
    try:
        for data, _ in openpgp._inflate(chunks, algorithm):
            out += data
    except UserError as exc:
        return f"error {exc.code}", bytes(out)
    return "ok", bytes(out)


def test_isal_and_zlib_agree_on_every_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = _streams()
    fast = {name: _inflate(algorithm, stream) for name, (algorithm, stream, _) in cases.items()}
    monkeypatch.setattr(openpgp, "_deflate", zlib)
    monkeypatch.setattr(openpgp, "_INFLATE_ERRORS", (zlib.error,))
    slow = {name: _inflate(algorithm, stream) for name, (algorithm, stream, _) in cases.items()}
    for name in cases:
        assert fast[name][0] == slow[name][0], (name, fast[name][0], slow[name][0])
        if fast[name][0] == "ok":
            assert fast[name][1] == slow[name][1], name
    for name in ("zip-good", "zip-trailing", "zlib-good", "zlib-trailing"):
        assert fast[name] == ("ok", cases[name][2]), name
    assert fast["zip-truncated"][0] == fast["zlib-truncated"][0] == "error truncated"
    assert fast["zlib-bad-check"][0] == "error corrupt_compression"
    assert any(fast[f"zlib-flip{i}"][0] != "ok" for i in range(12))  # (MDC catches the rest in a real file)
