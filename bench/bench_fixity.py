"""Fixity throughput on the filesystem vault against ``sha256sum`` over the same files, side by side.

Ours is the whole command a user (or the nightly deployment) runs: ``python flows/run.py fixity
--domain ega --older-than 0`` on a fresh INGEST_HOME, timed end to end (interpreter start, the local
API, the registry plan, one task per batch, the events and the summary). The peer is ``sha256sum``
over the same vault files, which is the least a fixity check must do. Both are bound by the same read
and hash; target: ours >= 0.9x of sha256sum. Peak RSS of ours shows memory stays flat in file size.

The archive is built directly (random vault objects plus the registry rows an EGA ingest leaves:
``ingests`` and ``ega_files`` completed with archive key, size and sha256), since the audit only reads
those. Files are warm in the page cache for both contenders (each runs once before timing).

Not a test: run it by hand on a quiet machine, e.g. ``python bench/bench_fixity.py --files 8 --mib 256``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "flows" / "run.py")]


def run(env: dict[str, str], argv: list[str], *, ok: tuple[int, ...] = (0,)) -> tuple[float, str, int]:
    """(seconds, stdout, peak RSS bytes of the command) via GNU time when present."""
    timer = ["/usr/bin/time", "-f", "%M"] if Path("/usr/bin/time").exists() else []
    t0 = time.perf_counter()
    proc = subprocess.run([*timer, *argv], check=False, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in ok:
        raise SystemExit(f"{argv[:3]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    rss = 0
    if timer:
        last = proc.stderr.strip().splitlines()[-1:]
        rss = int(last[0]) * 1024 if last and last[0].isdigit() else 0
    return elapsed, proc.stdout, rss


def runner_peak(home: Path, before: int) -> tuple[float, float] | None:
    """(peak RSS, peak private) in MiB of the call the warm runner's fork ran, from runner.log, when the
    command ran there (then /usr/bin/time sees only the thin caller)."""
    import re

    log = home / "prefect" / "runner.log"
    lines = log.read_text().splitlines() if log.exists() else []
    for line in reversed(lines[before:]):
        m = re.search(r"peak RSS ([\d.]+) MiB, peak private ([\d.]+) MiB", line)
        if m:
            return float(m.group(1)), float(m.group(2))
    return None


def log_lines(home: Path) -> int:
    log = home / "prefect" / "runner.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def build_archive(home: Path, files: int, mib: int) -> list[Path]:
    """Vault objects of ``mib`` MiB and the registry rows of completed EGA ingests pointing at them."""
    os.environ["INGEST_HOME"] = str(home)
    from tasks.registry import open_registry

    vault = home / "vault"
    paths = []
    with open_registry() as registry:
        for i in range(files):
            stable_id = f"EGAFBENCH{i:06d}"
            key = f"ega/{stable_id}/sha256-{i:064x}.c4gh"
            path = vault / key
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            with open(path, "wb") as fh:
                for _ in range(mib):
                    block = os.urandom(1 << 20)
                    digest.update(block)
                    fh.write(block)
            ingest = registry.begin_ingest("ega", f"{stable_id}|bench/f{i}.gpg")
            registry.execute(
                "INSERT INTO ega_files (ingest_id, stable_id, user_name, filepath, upload_checksum, upload_checksum_type,"
                " status, archive_key, archive_size, archive_checksum, archive_checksum_type, archive_uri)"
                " VALUES (%s, %s, 'bench', %s, %s, 'sha256', 'completed', %s, %s, %s, 'sha256', %s)",
                (ingest.id, stable_id, f"f{i}.gpg", f"{i:064x}", key, mib << 20, digest.hexdigest(),
                 path.as_uri()))
            registry.set_state(ingest.id, "completed")
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=128, help="size of each vault object")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender, interleaved; medians")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fixity-"))
    home = work / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(INGEST_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    os.environ["INGEST_HOME"] = str(home)
    fixity = [*RUN, "fixity", "--domain", "ega", "--older-than", "0"]
    try:
        run(env, [*RUN, "init"])
        # In a child process: this one never becomes a user of the home's embedded PostgreSQL, so it can
        # stop that server before removing the home.
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=build_archive, args=(home, args.files, args.mib))
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"building the archive failed ({child.exitcode})")
        paths = sorted((home / "vault" / "ega").rglob("*.c4gh"))
        total = args.files * (args.mib << 20)
        peer = ["sha256sum", *map(str, paths)]
        run(env, peer)  # warm the page cache and the local API for both
        _, out, _ = run(env, fixity)
        first = json.loads(out.strip().splitlines()[-1])
        assert first["checked"] == args.files and first["failed"] == 0, first
        ours, theirs, rss, inside, private = [], [], [], [], []
        for _ in range(args.repeat):
            before = log_lines(home)
            t, out, r = run(env, fixity)
            forked = runner_peak(home, before)
            if forked:
                r = int(forked[0] * 2**20)
                private.append(forked[1])
            summary = json.loads(out.strip().splitlines()[-1])
            assert summary["checked"] == args.files and summary["bytes_read"] == total, summary
            ours.append(t)
            rss.append(r)
            inside.append(summary["check_seconds"])
            theirs.append(run(env, peer)[0])
        o, p = statistics.median(ours), statistics.median(theirs)
        print(f"fixity over {args.files} x {args.mib} MiB = {total / 1e9:.2f} GB on the filesystem vault "
              f"(median of {args.repeat}, page cache warm)")
        print(f"  {'python flows/run.py fixity --domain ega (whole command)':58} {o:7.3f} s  "
              f"{total / o / 1e6:7.0f} MB/s  peak RSS {max(rss) / 2**20:.0f} MiB"
              + (f" (in the warm runner's fork; private {max(private):.0f} MiB)" if private else ""))
        i = statistics.median(inside)
        print(f"  {'  of which the checks (batches, events) inside the flow':58} {i:7.3f} s  "
              f"{total / i / 1e6:7.0f} MB/s")
        print(f"  {'sha256sum over the same files':58} {p:7.3f} s  {total / p / 1e6:7.0f} MB/s")
        print(f"  ratio (sha256sum time / ours): {p / o:.2f}x  (target >= 0.9x)")
    finally:
        run(env, [*RUN, "server", "stop"], ok=(0, 1, 2))
        from tasks import embedded_pg

        embedded_pg.stop_if_unused(home / "pg")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
