"""FITS flow costs: first ingest vs an unchanged re-ingest, and cubes per second in bulk.

1. For each size in ``--sizes-mib`` (default 1024,4096) one cube (CHECKSUM/DATASUM on
   every HDU) is ingested for real (its rows and previews deleted before every
   repetition, so the preview is rendered again) and then re-ingested unchanged, both
   as plain step calls (what a batch of ``ingest-fits-directory`` runs per cube) and as
   the ``ingest-fits-cube`` flow. Each is timed with a warm page cache and with the cube
   evicted from it first (``posix_fadvise(DONTNEED)``: the cube was not just written
   on this host). Target: a re-ingest costs <= 5% of the first ingest.
   The fixed cost of any Prefect flow run here (an empty ``@flow``) is printed beside it.
2. ``--cubes`` (default 500) small cubes through ``ingest-fits-directory`` (batches of
   ``--batch-size``), then the same directory again (every cube skipped): cubes/second.
3. The same cubes queued one request each (``fits PATH --queue``) and drained by one
   ``process-fits-work-orders`` run: what an unchanged cube adds to a run, against the
   first ingests of part 1 (an unchanged cube costs a header read whatever its size).

The registry is a scratch database on $INGEST_BENCH_PG (default the local server). Prefect
is the ephemeral API, on a scratch PostgreSQL database there too (``--prefect-db postgres``,
the default) or on Prefect's default SQLite (``--prefect-db sqlite``, which stalls ~2 s on
a 503 in about every second run here: see docs/architecture.md). Its start-up is excluded
by a warm-up run.

    python bench/bench_fits_flow.py
    python bench/bench_fits_flow.py --sizes-mib 256 --cubes 100 --repeat 3
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

FITS_TABLES = ("fits_metadata", "fits_svo_submissions", "fits_previews", "fits_extension_data", "fits_tags",
               "fits_headers", "fits_access_grants", "fits_access", "fits_cubes", "fits_observations",
               "fits_work_orders")


def make_big_cube(directory: Path, size_mib: int) -> Path:
    """A real (non-sparse) cube of about ``size_mib`` MiB with the sample cube's headers and extensions."""
    from bench.harness import write_random_cube
    from flows.fits.samples import SampleCube, _extensions, _header, filename

    plane = 4 * 8 * 512 * 512 * 4                      # Stokes x wavelengths x y x x, float32
    scans = max(1, round(size_mib * 2**20 / plane))
    spec = SampleCube(nx=512, ny=512, n_wave=8, n_stokes=4, scans=list(range(scans)))
    return write_random_cube(directory / filename(spec), (scans, 4, 8, 512, 512), _header(spec), _extensions(spec))


def scratch_database(prefix: str = "fits_bench") -> tuple[str, str, str]:
    import psycopg

    admin = os.environ.get("INGEST_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
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


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache, as if it arrived from elsewhere."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def forget_cubes(dsn: str, preview_root: Path) -> None:
    """Back to a registry that never saw a cube (instruments and vocabulary stay)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(FITS_TABLES)} CASCADE")
        conn.execute("DELETE FROM ingests WHERE domain = 'fits'")
    shutil.rmtree(preview_root, ignore_errors=True)


def median(runs) -> float:
    return statistics.median(seconds for seconds, _ in runs)


def measure_cube(big: Path, rel: str, dsn: str, home: Path, repeat: int, cold: bool) -> dict[str, object]:
    """First ingest and unchanged re-ingest, plain and as a flow; the first ingests start from nothing."""
    from flows.fits import flow as fits_flow
    from flows.fits.steps import CubeRequest, load_config

    def prepared(first: bool) -> None:
        if first:
            forget_cubes(dsn, home / "previews")
        if cold:
            evict(big)

    def runs(fn, first: bool):
        out = []
        for _ in range(repeat):
            prepared(first)
            out.append(timed(fn))
        return out

    cfg = load_config()
    try:
        plain_first = runs(lambda: fits_flow.ingest_one(cfg, CubeRequest(rel), fits_flow.PLAIN), True)
        plain_again = runs(lambda: fits_flow.ingest_one(cfg, CubeRequest(rel), fits_flow.PLAIN), False)
    finally:
        cfg.close()
    flow_first = runs(lambda: fits_flow.ingest_fits_cube(rel), True)
    flow_again = runs(lambda: fits_flow.ingest_fits_cube(rel), False)
    for first, again in ((plain_first, plain_again), (flow_first, flow_again)):
        assert {r["state"] for _, r in first} == {"ingested"}, [r["state"] for _, r in first]
        assert {r["state"] for _, r in again} == {"skipped"}, [r["state"] for _, r in again]
        assert all(r["previews"]["regenerated"] for _, r in first), "a first ingest renders its preview"
    return {"plain": (plain_first, plain_again), "flow": (flow_first, flow_again)}


def prefect_floor(repeat: int) -> float:
    """What any flow run costs here: an empty flow against the same API."""
    from prefect import flow

    @flow(name="bench-empty")
    def empty() -> int:
        return 1

    empty()
    return statistics.median(timed(empty)[0] for _ in range(max(repeat, 5)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", default="1024,4096", help="comma-separated cube sizes")
    parser.add_argument("--cubes", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=5, help="runs per single-cube measurement (median)")
    parser.add_argument("--prefect-db", choices=("postgres", "sqlite"), default="postgres")
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes_mib.split(",") if v.strip()]

    home = Path(tempfile.mkdtemp(prefix="fits-bench-"))
    os.environ["INGEST_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    admin, dbname, dsn = scratch_database()
    os.environ["INGEST_REGISTRY_DSN"] = dsn
    scratch = [dbname]
    if args.prefect_db == "postgres":                          # before Prefect is imported
        _, prefect_name, prefect_dsn = scratch_database("prefect_bench")
        scratch.append(prefect_name)
        os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_dsn.replace("postgresql://",
                                                                                  "postgresql+asyncpg://", 1)

    import tasks  # noqa: F401  (Prefect home under INGEST_HOME)
    from flows.cli_common import local_run
    from flows.fits import flow as fits_flow
    from flows.fits.samples import SampleCube, write_sample_cube

    science = home / "science"
    try:
        with local_run():
            warm = write_sample_cube(science / "warm")                  # start the ephemeral API outside timings
            fits_flow.ingest_fits_cube(warm.relative_to(science).as_posix(), previews=False)
            floor = prefect_floor(args.repeat)
            print(f"Prefect API database: {args.prefect_db}; an empty flow run costs {floor:.3f} s (median)\n")
            print(f"## Unchanged re-ingest vs first ingest (CHECKSUM on every HDU, median of {args.repeat})\n")
            print("| cube | page cache | path | first ingest s | unchanged re-ingest s | ratio | target |")
            print("|---|---|---|---|---|---|---|")
            details = []
            for size_mib in sizes:
                big_dir = science / f"big{size_mib}"
                big_dir.mkdir(parents=True)
                t_make, big = timed(make_big_cube, big_dir, size_mib)
                size = big.stat().st_size
                rel = big.relative_to(science).as_posix()
                for cold in (False, True):
                    result = measure_cube(big, rel, dsn, home, args.repeat, cold)
                    for label, key in (("plain steps (batch)", "plain"), ("ingest-fits-cube flow", "flow")):
                        first, again = result[key]
                        a, b = median(first), median(again)
                        print(f"| {size / 2**20:.0f} MiB | {'cold' if cold else 'warm'} | {label} | {a:.3f} | "
                              f"{b:.3f} | {100 * b / a:.1f}% | <= 5% |", flush=True)
                    details.append((size_mib, cold, result))
                big.unlink()
            for size_mib, cold, result in details:
                first, again = result["plain"]
                print(f"\n{size_mib} MiB {'cold' if cold else 'warm'}: first-ingest steps (plain)",
                      {k: round(v, 3) for k, v in first[-1][1]["timings"].items()},
                      "\n   re-ingest steps (plain)", {k: round(v, 3) for k, v in again[-1][1]["timings"].items()})
                first, again = result["flow"]
                print("   flow runs, first:", [round(s, 3) for s, _ in first], "re-ingest:",
                      [round(s, 3) for s, _ in again])

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

            # ---------------------------------------------------------------- 3. queued single-cube requests
            from flows.fits import records
            from flows.fits.steps import load_config

            relative = sorted(p.relative_to(science).as_posix() for p in bulk.rglob("*.fits"))
            empty_run = median([timed(fits_flow.process_work_orders) for _ in range(args.repeat)])
            cfg = load_config()
            try:
                records.queue_orders(cfg.registry, relative, {"previews": True})   # `fits PATH --queue` each
            finally:
                cfg.close()
            seconds, summary = timed(fits_flow.process_work_orders, batch_size=args.batch_size)
            assert summary["counts"] == {"ingested": 0, "skipped": args.cubes, "failed": 0}, summary["counts"]
            per_cube = (seconds - empty_run) / args.cubes
            print("\n## Queued requests (`fits PATH --queue`, then one process-fits-work-orders run)\n")
            print(f"{args.cubes} unchanged cubes in one run: {seconds:.2f} s; a run with an empty queue: "
                  f"{empty_run:.3f} s; so each unchanged cube adds {1000 * per_cube:.1f} ms.\n")
            print("| cube | page cache | first ingest (flow) s | unchanged, queued: per cube s | ratio | target |")
            print("|---|---|---|---|---|---|")
            for size_mib, cold, result in details:
                first = median(result["flow"][0])
                print(f"| {size_mib} MiB | {'cold' if cold else 'warm'} | {first:.3f} | {per_cube:.4f} | "
                      f"{100 * per_cube / first:.1f}% | <= 5% |")
    finally:
        for name in scratch:
            drop_database(admin, name)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
