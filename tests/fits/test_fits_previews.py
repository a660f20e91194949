"""Preview JPEG/thumbnail from the sibling PNG or the cube's middle frame, and the .mov → .webm video."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from cubes import CubeSpec, ffmpeg_bindir, write_cube, write_mov, write_sparse_cube
from PIL import Image

from flows.fits.previews import (
    THUMBNAIL_WIDTH,
    make_image_previews,
    make_video_preview,
    read_preview_frame,
)
from tasks.errors import UserError


def _grey(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=float)


def test_rendered_preview_is_the_middle_wavelength_of_scan_0_stokes_i(cube, tmp_path):
    result = make_image_previews(cube, tmp_path / "out", cube_change_key="k1")
    assert result.source == "cube" and result.regenerated and result.source_key == "cube:k1"
    with Image.open(result.full_size) as im:
        assert im.format == "JPEG" and im.size == (16, 12)       # full size: one pixel per cube pixel
    grey = _grey(result.full_size)
    columns = grey.mean(axis=0)
    assert columns[0] < 20 and columns[-1] > 235                 # the gradient only that frame has
    assert np.all(np.diff(columns) > -8)
    with Image.open(result.thumbnail) as im:
        assert im.format == "PNG" and im.size == (THUMBNAIL_WIDTH, round(12 * THUMBNAIL_WIDTH / 16))


def test_frame_is_read_from_the_right_place(cube):
    frame = read_preview_frame(cube)
    with fits.open(cube) as hdul:
        expected = hdul[0].data[0, 0, 5 // 2]
    np.testing.assert_array_equal(frame, expected)


def test_sibling_png_wins_and_unchanged_sources_are_not_redone(cube, tmp_path):
    png = cube.with_suffix(".png")
    Image.new("RGBA", (200, 100), (255, 0, 0, 255)).save(png)
    out = tmp_path / "out"
    first = make_image_previews(cube, out, cube_change_key="k1")
    assert first.source == "png" and first.source_key.startswith("png-sha256:")
    assert (first.width, first.height) == (200, 100)
    with Image.open(first.full_size) as im:
        assert im.size == (200, 100)
        r, g, b = im.convert("RGB").getpixel((10, 10))
        assert r > 240 and g < 20 and b < 20
    with Image.open(first.thumbnail) as im:
        assert im.size == (78, 39)

    mtime = first.full_size.stat().st_mtime_ns
    again = make_image_previews(cube, out, cube_change_key="k2", previous_key=first.source_key)
    assert not again.regenerated and again.full_size.stat().st_mtime_ns == mtime   # cube key ignored: PNG is the source

    Image.new("RGB", (50, 50), (0, 0, 255)).save(png)
    changed = make_image_previews(cube, out, cube_change_key="k2", previous_key=first.source_key)
    assert changed.regenerated and changed.source_key != first.source_key and changed.width == 50

    png.unlink()
    from_cube = make_image_previews(cube, out, cube_change_key="k2", previous_key=changed.source_key)
    assert from_cube.source == "cube" and from_cube.regenerated and from_cube.source_key == "cube:k2"


def test_missing_outputs_are_regenerated_even_with_the_same_key(cube, tmp_path):
    out = tmp_path / "out"
    first = make_image_previews(cube, out, cube_change_key="k1")
    first.thumbnail.unlink()
    again = make_image_previews(cube, out, cube_change_key="k1", previous_key=first.source_key)
    assert again.regenerated and again.thumbnail.is_file()
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_preview_of_a_huge_cube_reads_one_frame(tmp_path):
    # 1024 x 1024 x 21 wavelengths x 4 Stokes x 300 scans of float32: about 100 GB of hole.
    path = write_sparse_cube(tmp_path / "huge.fits", (1024, 1024, 21, 4, 300))
    t0 = time.perf_counter()
    result = make_image_previews(path, tmp_path / "out", cube_change_key="big")
    elapsed = time.perf_counter() - t0
    assert (result.width, result.height) == (1024, 1024)
    assert elapsed < 5.0, f"{elapsed:.1f}s: more than one 4 MiB frame was read"


def test_cube_without_an_image_is_a_user_error(tmp_path):
    path = tmp_path / "table_only.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(path)
    with pytest.raises(UserError, match="no image"):
        make_image_previews(path, tmp_path / "out", cube_change_key="x")


def test_bad_sibling_png_is_a_user_error(cube, tmp_path):
    cube.with_suffix(".png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="not a readable PNG"):
        make_image_previews(cube, tmp_path / "out", cube_change_key="x")


def test_mov_becomes_webm_when_ffmpeg_is_on_path(cube, tmp_path, monkeypatch):
    bindir = ffmpeg_bindir(tmp_path)
    assert bindir is not None, "the test extra installs imageio-ffmpeg"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    mov = write_mov(cube.with_suffix(".mov"))
    out = tmp_path / "out"
    video = make_video_preview(cube, out)
    assert video is not None and video.regenerated and video.path.suffix == ".webm"
    assert video.path.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"          # EBML magic: Matroska/WebM
    again = make_video_preview(cube, out, previous_key=video.source_key)
    assert again is not None and not again.regenerated

    mov.write_bytes(b"not a movie")
    with pytest.raises(UserError, match="could not convert"):
        make_video_preview(cube, out, previous_key=video.source_key)


def test_video_is_skipped_without_ffmpeg_or_without_mov(cube, tmp_path, monkeypatch, caplog):
    assert make_video_preview(cube, tmp_path / "out") is None             # no .mov beside the cube
    cube.with_suffix(".mov").write_bytes(b"\x00" * 64)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with caplog.at_level("WARNING"):
        assert make_video_preview(cube, tmp_path / "out") is None
    assert "ffmpeg is not on PATH" in caplog.text


def test_chromis_cube_without_stokes_previews(tmp_path):
    path = write_cube(tmp_path, CubeSpec(instrument="CHROMIS", n_stokes=1, n_wave=7))
    result = make_image_previews(path, tmp_path / "out", cube_change_key="c")
    assert (result.width, result.height) == (16, 12)
    assert _grey(result.full_size).mean(axis=0)[-1] > 235
