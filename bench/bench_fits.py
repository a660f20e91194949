"""FITS cube steps on a real (non-sparse) SST-like cube: ours vs the obvious astropy code.

Each contender runs in its own spawned process (bench.harness), so peak RSS is its own:

- headers: ``read_headers`` (lazy HDUs, every card parsed) vs ``fits.open(memmap=False)``
  touching ``.data`` of every HDU, which is what a non-lazy reader ends up doing;
- fixity: ``inspect_cube`` (checksums verified in one pass, change key from CHECKSUM)
  vs astropy's ``checksum=True`` open plus a separate sha256 of the file;
- preview: ``make_image_previews`` (one frame via ``section``) vs loading the primary
  data and indexing the frame.

    python bench/bench_fits.py                  # 1 GiB cube
    python bench/bench_fits.py --scans 2        # 512 MiB
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fits"))

from bench.harness import report, run_python, write_random_cube  # noqa: E402


def make_cube(directory: Path, scans: int) -> Path:
    from cubes import CubeSpec, extension_hdus, primary_header

    spec = CubeSpec(nx=1024, ny=1024, n_wave=16, n_stokes=4, scans=list(range(scans)))
    return write_random_cube(directory / "nb_6173_2019-04-16T08:20:18_scans=0-3_im.fits",
                             (scans, 4, 16, 1024, 1024), primary_header(spec), extension_hdus(spec))


def ours_headers(path: str) -> int:
    from flows.fits.header import read_headers

    return len(read_headers(path).hdus)


def naive_headers(path: str) -> int:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        for hdu in hdul:
            _ = hdu.data
        return len(hdul)


def ours_fixity(path: str) -> str:
    from flows.fits.header import inspect_cube

    return inspect_cube(path).change_key


def naive_fixity(path: str) -> str:
    from astropy.io import fits

    with fits.open(path, checksum=True, memmap=False) as hdul:
        for hdu in hdul:
            _ = hdu.data
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ours_preview(path: str, out: str) -> int:
    from flows.fits.previews import make_image_previews

    return make_image_previews(path, out, cube_change_key="bench").width


def naive_preview(path: str, out: str) -> int:
    import numpy as np
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        data = hdul[0].data
        frame = np.array(data[0, 0, data.shape[2] // 2])
    return frame.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=4, help="scans of 256 MiB each (default 4: 1 GiB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fits-") as tmp:
        tmpdir = Path(tmp)
        path = make_cube(tmpdir, args.scans)
        size = path.stat().st_size
        print(f"cube: {size / 2**20:.0f} MiB, {path.name}", flush=True)
        p = str(path)
        report("headers only", [run_python("ours: read_headers", ours_headers, p),
                                run_python("astropy: open + .data", naive_headers, p)])
        report("fixity + change key", [run_python("ours: inspect_cube", ours_fixity, p, nbytes=size),
                                       run_python("astropy checksum=True + sha256", naive_fixity, p, nbytes=size)])
        report("preview frame", [run_python("ours: make_image_previews", ours_preview, p, str(tmpdir / "o1")),
                                 run_python("astropy: load data, index frame", naive_preview, p,
                                            str(tmpdir / "o2"))])


if __name__ == "__main__":
    main()
