"""FITS flow costs: first ingest vs an unchanged re-ingest, and cubes per second in bulk.

1. One cube of ``--size-mib`` (default 1 GiB, CHECKSUM/DATASUM on every HDU) ingested
   three ways, each timed: the step pipeline as plain calls (what a batch runs), the
   ``ingest-fits-cube`` flow, and then an unchanged re-ingest of both (medians). The target is a
   re-ingest costing <= 5% of the first ingest: the skip rule reads headers only, while
   a first ingest verifies DATASUM over every data byte and renders a preview.
2. ``--cubes`` (default 500) small cubes through ``ingest-fits-directory`` (batches of
   ``--batch-size``), then the same directory again (every cube skipped): cubes/second.

The registry is a scratch database on $INGEST_BENCH_PG (default the local server);
Prefect is the ephemeral API (its start-up is excluded by a warm-up run).

    python bench/bench_fits_flow.py
    python bench/bench_fits_flow.py --size-mib 256 --cubes 100
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_big_cube(directory: Path, size_mib: int) -> Path:
    """A real (non-sparse) cube of about ``size_mib`` MiB, written scan by scan through a memmap."""
    import numpy as np
    from astropy.io import fits

    from flows.fits.samples import SampleCube, _extensions, _header, filename

    plane = 4 * 8 * 512 * 512 * 4                      # Stokes x wavelengths x y x x, float32
    scans = max(1, round(size_mib * 2**20 / plane))
    spec = SampleCube(nx=512, ny=512, n_wave=8, n_stokes=4, scans=list(range(scans)))
    shape = (scans, 4, 8, 512, 512)
    raw = np.memmap(directory / "data.raw", dtype=">f4", mode="w+", shape=shape)
    for s in range(scans):
        raw[s] = np.random.default_rng(s).random(shape[1:], dtype=np.float32)
    raw.flush()
    path = directory / filename(spec)
    fits.HDUList([fits.PrimaryHDU(data=raw, header=_header(spec)), *_extensions(spec)]).writeto(path, checksum=True)
    del raw
    (directory / "data.raw").unlink()
    return path


def scratch_database() -> tuple[str, str, str]:
    import psycopg

    admin = os.environ.get("INGEST_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"fits_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin, name, f"{admin.rsplit('/', 1)[0]}/{name}"


def drop_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--cubes", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=5, help="runs per single-cube measurement (median)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="fits-bench-"))
    os.environ["INGEST_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    admin, dbname, dsn = scratch_database()
    os.environ["INGEST_REGISTRY_DSN"] = dsn

    import tasks  # noqa: F401  (Prefect home under INGEST_HOME)
    from flows.cli_common import local_run
    from flows.fits import flow as fits_flow
    from flows.fits.samples import SampleCube, write_sample_cube
    from flows.fits.steps import CubeRequest, load_config

    science = home / "science"
    try:
        with local_run():
            # ---------------------------------------------------------------- 1. one big cube
            big_dir = science / "big"
            big_dir.mkdir(parents=True)
            t_make, big = timed(make_big_cube, big_dir, args.size_mib)
            size = big.stat().st_size
            print(f"cube: {size / 2**20:.0f} MiB written in {t_make:.1f}s", flush=True)
            rel = big.relative_to(science).as_posix()

            cfg = load_config()
            try:
                plain_first = [timed(fits_flow.ingest_one, cfg, CubeRequest(rel, force=True), fits_flow.PLAIN)
                               for _ in range(args.repeat)]
                plain_again = [timed(fits_flow.ingest_one, cfg, CubeRequest(rel), fits_flow.PLAIN)
                               for _ in range(args.repeat)]
            finally:
                cfg.close()
            assert {s["state"] for _, s in plain_first} == {"ingested"}
            assert {s["state"] for _, s in plain_again} == {"skipped"}

            warm = write_sample_cube(science / "warm")                  # start the ephemeral API outside timings
            fits_flow.ingest_fits_cube(warm.relative_to(science).as_posix(), previews=False)
            flow_first = [timed(fits_flow.ingest_fits_cube, rel, force=True) for _ in range(args.repeat)]
            flow_again = [timed(fits_flow.ingest_fits_cube, rel) for _ in range(args.repeat)]
            assert {s["state"] for _, s in flow_first} == {"ingested"}
            assert {s["state"] for _, s in flow_again} == {"skipped"}

            def median(runs):
                return statistics.median(seconds for seconds, _ in runs)

            print(f"\n## Unchanged re-ingest vs first ingest ({size / 2**20:.0f} MiB cube, CHECKSUM on every HDU, "
                  f"median of {args.repeat})\n")
            print("| path | first ingest s | unchanged re-ingest s | ratio | target |")
            print("|---|---|---|---|---|")
            for label, a, b in (("plain step pipeline (batch)", median(plain_first), median(plain_again)),
                                ("ingest-fits-cube flow", median(flow_first), median(flow_again))):
                print(f"| {label} | {a:.3f} | {b:.3f} | {100 * b / a:.1f}% | <= 5% |")
            print("\nfirst-ingest steps (plain):", {k: round(v, 3) for k, v in plain_first[-1][1]["timings"].items()})
            print("re-ingest steps (plain):   ", {k: round(v, 3) for k, v in plain_again[-1][1]["timings"].items()})
            print("flow runs, first:", [round(s, 2) for s, _ in flow_first], "re-ingest:",
                  [round(s, 2) for s, _ in flow_again])
            big.unlink()

            # ---------------------------------------------------------------- 2. many small cubes
            bulk = science / "bulk"
            start = time.perf_counter()
            for i in range(args.cubes):
                day, rest = divmod(i, 100)
                spec = SampleCube(date_beg=f"2021-07-{1 + day:02d}T{8 + rest // 60:02d}:{rest % 60:02d}:00.5",
                                  point_id=f"2021-07-{1 + day:02d}T08:00:00", nx=32, ny=24, n_wave=3, scans=[0, 1])
                write_sample_cube(bulk / f"day{day}", spec, name=f"cube{i:04d}_scans=0,1.fits")
            print(f"\n{args.cubes} cubes of {spec.nx}x{spec.ny}x{spec.n_wave}x4x2 written in "
                  f"{time.perf_counter() - start:.1f}s", flush=True)
            rows = []
            for label in ("first ingest", "unchanged (all skipped)"):
                seconds, summary = timed(fits_flow.ingest_fits_directory, "bulk", batch_size=args.batch_size)
                assert summary["counts"]["failed"] == 0, summary["counts"]
                rows.append((label, seconds, summary["counts"], summary["batches"]))
            print(f"\n## ingest-fits-directory, {args.cubes} small cubes, batches of {args.batch_size}, "
                  f"{fits_flow.BATCH_WORKERS} batch workers, previews on\n")
            print("| run | seconds | cubes/s | batches | counts |")
            print("|---|---|---|---|---|")
            for label, seconds, counts, batches in rows:
                print(f"| {label} | {seconds:.1f} | {args.cubes / seconds:.1f} | {batches} | {counts} |")
    finally:
        drop_database(admin, dbname)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
