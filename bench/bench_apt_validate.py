"""APT bag validation: our streaming scan+validate vs `tar -xf` + `bagit.py --validate`.

The bag: md5 + sha256 manifests, ``--files`` small files holding a tenth of
``--size`` plus two large files holding the rest (default 1 GiB, 10,000 files),
tarred. Before each contender, dirty pages are flushed (sync) and the tar is read
once, so every contender starts from a warm page cache and a clean disk queue.

Contenders, each in its own process (bench.harness):
  ours, 4 algorithms   what the flow runs: md5+sha1+sha256+sha512 of every file,
                       tag files parsed, APTrust 2.3 profile checks, no disk writes
  ours, md5+sha256     the same pass computing only what the manifests need,
                       i.e. the same hashing work as the peer
  tar -xf              peer step 1: unpack to disk
  bagit.py --validate  peer step 2: bagit-python validates the unpacked bag
  tar -xf + bagit.py   the peer as a whole (baseline for the ratios)

    python bench/bench_apt_validate.py                  # 1 GiB, 10,000 files
    python bench/bench_apt_validate.py --size 256M --files 2000
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import Result, report, run_command, run_python  # noqa: E402

BAG = "example.edu.bench_bag"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def build_bag(work: Path, size: int, files: int) -> Path:
    """Write the payload, bag it with bagit-python (md5+sha256), add aptrust-info.txt, tar it."""
    import bagit

    src = work / BAG
    (src / "small").mkdir(parents=True)
    pool = os.urandom(16 << 20)
    small_total = size // 10
    small_size = max(1, small_total // max(files, 1))
    for i in range(files):
        start = (i * 7919) % (len(pool) - small_size)
        (src / "small" / f"file{i:05d}.bin").write_bytes(pool[start:start + small_size])
    large = (size - small_size * files) // 2
    for n in (1, 2):
        with open(src / f"large{n}.bin", "wb") as fh:
            left = large
            while left:
                block = pool[: min(left, len(pool))]
                fh.write(block)
                left -= len(block)
            fh.write(n.to_bytes(4, "big"))  # the two large files differ
    bag = bagit.make_bag(str(src), {"Source-Organization": "Example University"}, checksums=["md5", "sha256"],
                         processes=2)
    (src / "aptrust-info.txt").write_text("Title: Benchmark bag\nAccess: Institution\nStorage-Option: Standard\n")
    bag.save(manifests=False)  # tag manifests now cover aptrust-info.txt
    tar = work / f"{BAG}.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(work), BAG], check=True)
    shutil.rmtree(src)
    return tar


def ours(tar: str, algorithms: tuple[str, ...]) -> dict:
    """Runs in the benchmark child: one pass, then the profile checks."""
    from flows.apt.tarscan import scan_bag_file
    from flows.apt.validate import validate_bag

    scan = scan_bag_file(tar, algorithms=algorithms)
    result = validate_bag(scan, Path(tar).name)
    return {"files": len(scan.files), "errors": result.errors[:3], "tar_size": scan.tar_size}


def settle(tar: Path) -> None:
    """Flush dirty pages left by the previous contender, then warm the tar in the page cache.

    Without the sync, `tar -xf` pays for the previous extraction's writeback.
    """
    os.sync()
    with open(tar, "rb") as fh:
        while fh.read(16 << 20):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="total payload size (e.g. 1G, 256M)")
    parser.add_argument("--files", type=int, default=10_000, help="number of small files")
    parser.add_argument("--workdir", default=None, help="where to build the bag (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="bench-apt-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        tar = build_bag(work, size, args.files)
        nbytes = tar.stat().st_size
        print(f"built {tar.name}: {nbytes / 2**20:.0f} MiB, {args.files} small + 2 large files "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        bagit_cli = shutil.which("bagit.py") or "bagit.py"
        out = work / "unpacked"
        results: list[Result] = []

        for label, algos in (("ours, 4 algorithms", ("md5", "sha1", "sha256", "sha512")),
                             ("ours, md5+sha256", ("md5", "sha256"))):
            settle(tar)
            r = run_python(label, ours, str(tar), algos, nbytes=nbytes)
            if r.extra["errors"]:
                raise SystemExit(f"{label} found the bag invalid: {r.extra['errors']}")
            results.append(r)

        out.mkdir()
        settle(tar)
        results.append(run_command("tar -xf", ["tar", "-xf", str(tar), "-C", str(out)], nbytes=nbytes))
        os.sync()
        peer = [bagit_cli, "--quiet", "--validate", str(out / BAG)]
        results.append(run_command("bagit.py --validate", peer, nbytes=nbytes))
        shutil.rmtree(out)

        out.mkdir()
        settle(tar)
        results.append(run_command(
            "tar -xf + bagit.py --validate",
            f"tar -xf '{tar}' -C '{out}' && '{bagit_cli}' --quiet --validate '{out / BAG}' 2>/dev/null",
            shell=True, nbytes=nbytes))
        shutil.rmtree(out)

        report(f"APT bag validation, {nbytes / 2**20:.0f} MiB tar, {args.files + 2} payload files",
               results, baseline="tar -xf + bagit.py --validate")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
