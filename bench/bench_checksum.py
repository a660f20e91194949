"""Multi-digest hashing: one pass with every algorithm vs one hashlib pass per algorithm vs coreutils.

    python bench/bench_checksum.py --size 1024   # MiB

Each contender runs in its own process (peak RSS is its own); the file is read
warm from the page cache by all of them.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Result, report, run_command, run_python  # noqa: E402

ALGOS = ["md5", "sha1", "sha256", "sha512"]


def ours(path: str) -> dict:
    from tasks.checksum import hash_file

    return hash_file(path, ALGOS).checksums


def hashlib_one(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def hashlib_passes(path: str) -> dict:
    return {a: hashlib_one(path, a) for a in ALGOS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="MiB of random data")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    nbytes = args.size << 20
    path = Path(args.dir) / f"bench-checksum-{os.getpid()}.bin"
    try:
        with open(path, "wb") as fh:
            chunk = os.urandom(16 << 20)
            for _ in range(0, nbytes, len(chunk)):
                fh.write(chunk)
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        results: list[Result] = []
        r = run_python("ours: one pass, md5+sha1+sha256+sha512", ours, str(path), nbytes=nbytes)
        results.append(r)
        h = run_python("hashlib: four passes, one per algorithm", hashlib_passes, str(path), nbytes=nbytes)
        assert h.extra == r.extra, "digests differ"
        results.append(h)
        for algo in ALGOS:
            results.append(run_python(f"hashlib: {algo} alone", hashlib_one, str(path), algo, nbytes=nbytes))
        results.append(run_command("coreutils: md5sum + sha1sum + sha256sum + sha512sum",
                                   " && ".join(f"{a}sum {path} >/dev/null" for a in ALGOS), shell=True, nbytes=nbytes))
        for algo in ("md5", "sha256"):
            results.append(run_command(f"coreutils: {algo}sum alone", [f"{algo}sum", str(path)], nbytes=nbytes))
        report(f"multi-digest hashing of {args.size} MiB (speed relative to four hashlib passes)", results,
               baseline="hashlib: four passes, one per algorithm")
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
