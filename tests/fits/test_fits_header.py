"""Header-only reading, fixity and the change key; broken and awkward files end in a clear UserError."""
from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from cubes import CubeSpec, write_cube, write_sparse_cube

from flows.fits.header import change_key, inspect_cube, read_headers, verify_checksums
from flows.fits.metadata import extract_metadata
from tasks.errors import UserError

ASTROPY_DATA = Path(fits.__file__).parent / "tests" / "data"
PACKAGED_FITS = sorted(ASTROPY_DATA.glob("*.fits")) + sorted(ASTROPY_DATA.glob("invalid/*.fits"))


def test_headers_of_a_cube(cube):
    headers = read_headers(cube)
    assert headers.primary["INSTRUME"] == "CRISP"
    assert headers.extension_names == ["WCS-TAB", "VAR-EXT-SCANNUM", "VAR-EXT-ATMOS_R0", "VAR-EXT-DATAMEDN"]
    assert headers.extension("var-ext-scannum")["TTYPE1"] == "SCANNUM"
    assert headers.extension("NOPE") is None
    assert headers.size == cube.stat().st_size
    last = headers.hdus[-1]
    assert last.data_offset + last.data_size <= headers.size < last.data_offset + last.data_size + 2880


def test_change_key_uses_checksums_when_every_hdu_has_one(cube, tmp_path):
    first = inspect_cube(cube)
    assert first.change_key.startswith("fits-checksum:") and first.change_key.count(",") == 4
    assert all(c.checksum.name == "OK" and c.datasum.name == "OK" for c in first.checksums)
    assert inspect_cube(cube).change_key == first.change_key
    (tmp_path / "other").mkdir()
    other = write_cube(tmp_path / "other", CubeSpec(date_beg="2019-04-16T09:00:00.5"))
    assert inspect_cube(other).change_key != first.change_key


def test_change_key_without_checksum_is_the_file_sha256(tmp_path):
    path = write_cube(tmp_path, CubeSpec(checksum=False))
    result = inspect_cube(path)
    assert result.change_key == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert all(c.checksum.name == "MISSING" for c in result.checksums)


def test_a_changed_byte_fails_the_checksum(cube):
    raw = bytearray(cube.read_bytes())
    offset = read_headers(cube).hdus[0].data_offset + 100
    raw[offset] ^= 0x55
    cube.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"DATASUM of HDU 0 \(PRIMARY\) do not match"):
        inspect_cube(cube)


def test_compressed_image_hdu_checksums_verify(tmp_path):
    path = tmp_path / "compressed.fits"
    data = np.arange(64 * 48, dtype=np.float32).reshape(48, 64)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, name="COMP")]).writeto(path, checksum=True)
    result = inspect_cube(path)
    assert [c.checksum.name for c in result.checksums] == ["OK", "OK"]
    assert result.change_key.startswith("fits-checksum:")
    assert read_headers(path).extension_names == ["COMP"]


def test_memtest_empty_datasum_is_a_user_error():
    path = ASTROPY_DATA / "memtest.fits"
    assert read_headers(path).primary["DATASUM"] == ""          # the header itself is readable
    with pytest.raises(UserError, match="empty DATASUM"):
        inspect_cube(path)


def _cube_bytes(tmp_path: Path) -> tuple[bytes, int]:
    path = write_cube(tmp_path, CubeSpec(checksum=False))
    raw = path.read_bytes()
    return raw, raw.index(b"OBSERVER")


def _put_card(raw: bytes, at: int, card: bytes) -> bytes:
    return raw[:at] + card.ljust(80)[:80] + raw[at + 80:]


@pytest.mark.parametrize("card, message", [
    (b"OBSERVER= 'unterminated", "is not a valid FITS card"),
    (b"OBSERVER=   12.3.4.5", "is not a valid FITS card"),
    (b"obs%rver= 12 / lower case and a percent sign", "not a valid FITS card"),
    (b"THIS IS NOT A FITS CARD AT ALL = = =", "not a valid FITS card"),
    (b"OBSERVER= 'a\x01b'", "not a readable FITS file"),
    (b"OBSERVER= 'J\xf6rg'", "non-ASCII"),
])
def test_non_fits_cards_are_user_errors(tmp_path, card, message):
    raw, at = _cube_bytes(tmp_path)
    bad = tmp_path / "bad.fits"
    bad.write_bytes(_put_card(raw, at, card))
    with pytest.raises(UserError, match=message):
        read_headers(bad)


@pytest.mark.parametrize("cut", ["header", "primary data", "extension data", "extension header"])
def test_truncated_files_are_user_errors(tmp_path, cut):
    path = write_cube(tmp_path, CubeSpec(checksum=False))
    raw = path.read_bytes()
    hdus = read_headers(path).hdus
    keep = {"header": 1000, "primary data": hdus[0].data_offset + 50, "extension data": len(raw) - 100,
            "extension header": len(raw) - 3000}[cut]
    bad = tmp_path / "cut.fits"
    bad.write_bytes(raw[:keep])
    with pytest.raises(UserError, match="truncated|not a readable FITS file"):
        read_headers(bad)


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"hello world" * 300, "not a readable FITS file")])
def test_not_fits_at_all(tmp_path, content, message):
    path = tmp_path / "x.fits"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        inspect_cube(path)
    with pytest.raises(UserError, match="cannot read"):
        read_headers(tmp_path / "missing.fits")


def test_header_of_a_huge_sparse_cube_is_read_without_its_data(tmp_path):
    # 1024 x 1024 x 15 wavelengths x 4 Stokes x 200 scans of float32: 50 GB, nearly all a hole.
    path = write_sparse_cube(tmp_path / "huge.fits", (1024, 1024, 15, 4, 200))
    assert path.stat().st_size > 50e9
    assert os.stat(path).st_blocks * 512 < 1 << 20              # really sparse: nothing to read
    t0 = time.perf_counter()
    headers = read_headers(path)
    meta = extract_metadata(headers.primary)
    elapsed = time.perf_counter() - t0
    assert meta.columns["naxis5"] == 200 and meta.columns["instrume"] == "CRISP"
    assert elapsed < 1.0, f"header read took {elapsed:.2f}s; reading 50 GB of data would take far longer"


@pytest.mark.parametrize("path", PACKAGED_FITS, ids=lambda p: p.name)
def test_packaged_fits_files_give_results_or_user_errors(path, tmp_path):
    """Every FITS file astropy ships goes through headers, checksums and metadata without a traceback."""
    local = tmp_path / path.name
    local.write_bytes(path.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cube = inspect_cube(local)
            for hdu in cube.headers.hdus:
                meta = extract_metadata(hdu.header)
                assert meta.header_text.startswith(("SIMPLE", "XTENSION"))
        except UserError as exc:
            assert exc.message and "Traceback" not in exc.message
    assert change_key(local, []).startswith("sha256:")


def test_verify_checksums_names_the_failing_hdu():
    with pytest.raises(UserError, match=r"HDU 0 \(PRIMARY\)"):
        verify_checksums(ASTROPY_DATA / "checksum_false.fits")
    assert [c.checksum.name for c in verify_checksums(ASTROPY_DATA / "checksum.fits")] == ["OK", "OK"]


def test_simple_false_is_explained_for_a_person(tmp_path):
    path = tmp_path / "nonstandard.fits"
    fits.PrimaryHDU(np.zeros((4, 4), dtype="f4")).writeto(path)
    raw = bytearray(path.read_bytes())
    raw[29] = ord("F")                                        # SIMPLE  =                    F
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as info:
        read_headers(path)
    message = str(info.value)
    assert "SIMPLE = F" in message and "does not conform to the FITS standard" in message
    assert "_NonstandardHDU" not in message and "attribute" not in message


def test_a_tab_in_a_comment_card_is_accepted_as_astropy_accepts_it(tmp_path):
    """A real Solar Orbiter SPICE L2 file has a tab in a COMMENT card: astropy reads it and only warns."""
    path = tmp_path / "spice.fits"
    hdu = fits.PrimaryHDU(np.zeros((4, 4), dtype="f4"))
    hdu.header["COMMENT"] = "SPICE    level 2"
    hdu.header["HISTORY"] = "made by hand"
    hdu.writeto(path)
    raw = bytearray(path.read_bytes())
    for text in (b"SPICE    level 2", b"made by hand"):
        raw[raw.find(text) + 5] = 9                           # a tab inside the commentary text
    path.write_bytes(bytes(raw))
    headers = read_headers(path)
    assert "\t" in str(headers.primary["COMMENT"][0]) and "\t" in str(headers.primary["HISTORY"][0])
    assert "\t" in extract_metadata(headers.primary).header_text
    bad = tmp_path / "tab-in-value.fits"                      # outside commentary it is still refused
    fits.PrimaryHDU(header=fits.Header([("OBSERVER", "a b")])).writeto(bad)
    raw = bytearray(bad.read_bytes())
    raw[raw.find(b"a b") + 1] = 9
    bad.write_bytes(bytes(raw))
    with pytest.raises(UserError):
        read_headers(bad)
        extract_metadata(read_headers(bad).primary)


def test_fits_names_and_gzip_are_read_in_a_stream(cube, tmp_path):
    import gzip
    import shutil

    from flows.fits.names import decompress, fits_stem, fits_suffix, is_fits_name

    assert [fits_suffix(n) for n in ("a.fits", "a.FTS", "a.fit", "a.fits.fz", "a.fits.gz", "a.fts.gz", "a.gz",
                                     "a.fits.zip", ".fits")] == [".fits", ".FTS", ".fit", ".fits.fz", ".fits.gz",
                                                                 ".fts.gz", None, None, None]
    assert fits_stem("nb_6173.fits.gz") == "nb_6173" and not is_fits_name("notes.txt")
    packed = tmp_path / "cube.fits.gz"
    with open(cube, "rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = decompress(packed, tmp_path / "staged" / "cube.fits")
    assert plain.read_bytes() == cube.read_bytes() and not list((tmp_path / "staged").glob(".*part"))
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(packed.read_bytes()[:-100])
    with pytest.raises(UserError, match="not a readable gzip file"):
        decompress(cut, tmp_path / "staged" / "cut.fits")
    fake = tmp_path / "fake.fits.gz"
    shutil.copy(cube, fake)
    with pytest.raises(UserError, match="not one"):
        decompress(fake, tmp_path / "staged" / "fake.fits")
    assert sorted(p.name for p in (tmp_path / "staged").iterdir()) == ["cube.fits"]
