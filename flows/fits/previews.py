"""Preview images and video of a cube, regenerated only when their source changes.

The SST pipeline usually writes a PNG (and a QuickTime .mov) beside each exported
cube with the same stem; when present they are the source, since an observer
chose how they look. Otherwise one frame is rendered from the cube: scan 0,
Stokes I, the middle wavelength point, i.e. ``data[0][0][n_wave // 2]`` in
astropy's reversed axis order (scan, Stokes, wavelength, y, x). Only that frame
is read (``ImageHDU.section``), never the cube.

Outputs are a full-size JPEG and a PNG thumbnail 78 px wide, written atomically
into the output directory. Each result carries a ``source_key``; when the caller
passes the previous key and the outputs still exist, nothing is redone.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.checksum import hash_file
from tasks.errors import UserError
from tasks.staging import StagingArea

log = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 78
JPEG_QUALITY = 90


@dataclass(frozen=True)
class ImagePreviews:
    full_size: Path
    thumbnail: Path
    source: str          # "png" or "cube"
    source_key: str
    width: int
    height: int
    regenerated: bool


@dataclass(frozen=True)
class VideoPreview:
    path: Path
    source_key: str
    regenerated: bool


def sibling(cube_path: str | Path, suffix: str) -> Path:
    """``cube.fits`` / ``cube.fits.gz`` / ``cube.fts`` → ``cube<suffix>`` beside it."""
    from flows.fits.names import fits_stem

    path = Path(cube_path)
    return path.with_name(fits_stem(path.name) + suffix)


def image_source_key(cube_path: str | Path, cube_change_key: str) -> str:
    png = sibling(cube_path, ".png")
    if png.is_file():
        return "png-sha256:" + hash_file(png, ("sha256",)).checksums["sha256"]
    return "cube:" + cube_change_key


def make_image_previews(cube_path: str | Path, out_dir: str | Path, *, cube_change_key: str,
                        previous_key: str | None = None, sibling_of: str | Path | None = None) -> ImagePreviews:
    """Full-size JPEG + 78-px PNG thumbnail from the sibling PNG, else from the cube's middle frame.

    ``cube_path`` is read; ``sibling_of`` (default: the same) is the stored file, whose name gives
    the outputs' stem and beside which the PNG is looked for (a gzipped cube is read from a copy).
    """
    from flows.fits.names import fits_stem

    cube_path = Path(cube_path)
    stored = Path(sibling_of) if sibling_of is not None else cube_path
    area = StagingArea(out_dir)
    stem = fits_stem(stored.name)
    full_name, thumb_name = f"{stem}.jpg", f"{stem}.thumb.png"
    key = image_source_key(stored, cube_change_key)
    png = sibling(stored, ".png")
    source = "png" if key.startswith("png-") else "cube"

    full, thumb = area.path(full_name), area.path(thumb_name)
    if previous_key == key and full.is_file() and thumb.is_file():
        width, height = _image_size(full)
        return ImagePreviews(full, thumb, source, key, width, height, regenerated=False)

    from PIL import Image

    if source == "png":
        try:
            with Image.open(png) as im:
                im.load()
                image = _to_rgb(im)
        except (OSError, ValueError) as exc:
            raise UserError(f"preview image {png.name} is not a readable PNG: {exc}") from exc
    else:
        image = Image.fromarray(render_frame(read_preview_frame(cube_path)))

    with area.atomic_writer(full_name) as fh:
        image.save(fh, format="JPEG", quality=JPEG_QUALITY)
    height = max(1, round(image.height * THUMBNAIL_WIDTH / image.width))
    with area.atomic_writer(thumb_name) as fh:
        image.resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS).save(fh, format="PNG")
    return ImagePreviews(full, thumb, source, key, image.width, image.height, regenerated=True)


def read_preview_frame(cube_path: str | Path) -> np.ndarray:
    """The 2-D frame [0, 0, mid-wavelength] of the primary data, read on its own."""
    from astropy.io import fits

    cube_path = Path(cube_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with fits.open(cube_path, lazy_load_hdus=True, memmap=True, mode="readonly") as hdul:
                hdu = _first_image(hdul)
                naxis = int(hdu.header.get("NAXIS", 0)) if hdu is not None else 0
                if hdu is None or naxis < 2:
                    raise UserError(f"{cube_path.name} has no image in its primary HDU (nor in an image "
                                    "extension) to preview")
                shape = tuple(int(hdu.header[f"NAXIS{n}"]) for n in range(naxis, 0, -1))
                if any(n == 0 for n in shape):
                    raise UserError(f"{cube_path.name} has an empty image axis")
                index: list[int] = [0] * (naxis - 2)
                if naxis >= 3:
                    # NAXIS3 (wavelength) is the third axis from the end in astropy's order.
                    index[naxis - 3] = shape[naxis - 3] // 2
                frame = np.array(hdu.section[tuple(index)], dtype=np.float64)
        except UserError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"cannot read a preview frame from {cube_path.name}: {exc}") from exc
    return frame


def _first_image(hdul):
    """The primary HDU when it holds an image, else the first image extension (fpack's ``.fz`` files
    keep the image in a compressed extension behind an empty primary)."""
    from astropy.io import fits

    for index in range(len(hdul)):
        hdu = hdul[index]
        image = isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
        if image and int(hdu.header.get("NAXIS", 0)) >= 2:
            return hdu
    return None


def render_frame(frame: np.ndarray) -> np.ndarray:
    """Grey-scale RGB uint8 image, 1-99 percentile stretch, origin at the bottom as FITS means it."""
    from matplotlib import colormaps

    data = np.asarray(frame, dtype=np.float64)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = np.percentile(finite, [1, 99])
        if hi <= lo:
            lo, hi = float(finite.min()), float(finite.max())
        if hi <= lo:
            hi = lo + 1.0
    scaled = np.clip((np.nan_to_num(data, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    rgba = colormaps["gray"](scaled[::-1], bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def video_source_key(cube_path: str | Path) -> str | None:
    mov = sibling(cube_path, ".mov")
    return "mov-sha256:" + hash_file(mov, ("sha256",)).checksums["sha256"] if mov.is_file() else None


def make_video_preview(cube_path: str | Path, out_dir: str | Path, *, previous_key: str | None = None,
                       ffmpeg: str | None = None, timeout: float = 600.0) -> VideoPreview | None:
    """The sibling .mov as VP9 .webm; None (with a logged note) when there is no .mov or no ffmpeg."""
    cube_path = Path(cube_path)
    mov = sibling(cube_path, ".mov")
    key = video_source_key(cube_path)
    if key is None:
        return None
    area = StagingArea(out_dir)
    name = f"{sibling(cube_path, '').name}.webm"
    target = area.path(name)
    if previous_key == key and target.is_file():
        return VideoPreview(target, key, regenerated=False)
    exe = ffmpeg or shutil.which("ffmpeg")
    if not exe:
        log.warning("video preview of %s skipped: ffmpeg is not on PATH", cube_path.name)
        return None
    tmp = target.with_name(f".{name}.{hashlib.sha1(key.encode()).hexdigest()[:8]}.part.webm")
    cmd = [exe, "-hide_banner", "-loglevel", "error", "-y", "-i", str(mov), "-c:v", "libvpx-vp9",
           "-b:v", "0", "-crf", "40", "-an", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tmp.unlink(missing_ok=True)
        raise TimeoutError(f"ffmpeg took longer than {timeout} s on {mov.name}") from exc
    if proc.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        detail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"ffmpeg could not convert {mov.name} to WebM: {detail[0][:300]}")
    tmp.replace(target)
    return VideoPreview(target, key, regenerated=True)


def _to_rgb(im):
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        from PIL import Image

        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    if im.mode in ("I;16", "I", "F"):
        return _to_rgb_from_array(np.asarray(im))
    return im.convert("RGB")


def _to_rgb_from_array(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(render_frame(arr[::-1]))


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size
