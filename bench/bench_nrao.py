"""NGAS archive throughput: our client (stream + CRC + verify) vs a plain httpx streaming POST.

Both push the same file to the fake NGAS server (tests/nrao/fake_ngas.py, a real
HTTP server on 127.0.0.1 that writes the body to disk and computes its CRC), each
from a fresh process so peak RSS is the contender's own. They run as back-to-back
pairs in alternating order, and the ratio is the median over pairs, because on a
shared 2-core machine the absolute speed drifts more than the two contenders differ.
A second, larger run of our client shows that memory does not grow with the file size.

    python bench/bench_nrao.py                 # 1 GiB, plus a 2 GiB RSS check
    python bench/bench_nrao.py --size 256MiB --rss-size 0
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "nrao"))

from bench.harness import report, run_python  # noqa: E402

TARGET_RATIO = 0.8


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def ours(url: str, path: str, crc_variant: str) -> dict:
    from flows.nrao.ngas import NgasClient

    with NgasClient(url, crc_variant=crc_variant, retries=1) as client:
        r = client.archive(path, file_id=f"bench-ours-{Path(path).name}")
    return {"version": r.file_version, "checksum": r.checksum, "plugin": r.checksum_plugin}


def plain(url: str, path: str, block: int, crc_variant: str) -> dict:
    import os

    import httpx

    size = os.path.getsize(path)

    def body():
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(block):
                yield chunk

    with httpx.Client(timeout=600) as client:
        # same server-side work as ours: the fake NGAS computes the CRC variant asked for
        params = {"filename": f"bench-plain-{Path(path).name}", "crc_variant": crc_variant}
        resp = client.post(f"{url}/ARCHIVE", params=params, content=body(),
                           headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        resp.raise_for_status()
    return {"status": resp.status_code}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="file size (default 1GiB)")
    ap.add_argument("--rss-size", type=parse_size, default=2 << 30,
                    help="also archive a file this big with our client to show flat RSS (0 = skip; default 2GiB)")
    ap.add_argument("--crc-variant", default="crc32c", choices=["crc32", "crc32c", "crc32z"])
    ap.add_argument("--repeat", type=int, default=5,
                    help="back-to-back pairs; the median pair ratio and each side's best time are reported")
    ap.add_argument("--dir", default=None, help="scratch directory for the source file (default: a temp dir)")
    ap.add_argument("--server-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                    help="where the fake NGAS stores bodies (default /dev/shm, so its disk writeback does not "
                         "pollute the client comparison)")
    args = ap.parse_args(argv)

    from fake_ngas import FakeNgas
    from flows.nrao.samples import make_sample_file
    from tasks.checksum import BLOCK_SIZE

    scratch = Path(tempfile.mkdtemp(prefix="bench-nrao-", dir=args.dir))
    server_root = Path(tempfile.mkdtemp(prefix="bench-nrao-ngas-", dir=args.server_dir))
    try:
        src = make_sample_file(scratch / "sample.bin", args.size)
        with FakeNgas(server_root, crc_variant="crc32") as server:
            contenders = [("plain httpx streaming POST", plain, (BLOCK_SIZE, args.crc_variant)),
                          (f"ours: NgasClient.archive ({args.crc_variant})", ours, (args.crc_variant,))]
            best: dict[str, object] = {}
            pair_ratios = []
            for i in range(max(1, args.repeat)):
                # alternate the order so neither side always runs on a warmer or dirtier system
                times = {}
                for name, fn, extra in (contenders if i % 2 == 0 else contenders[::-1]):
                    r = run_python(name, fn, server.url, str(src), *extra, nbytes=args.size)
                    times[name] = r.seconds
                    if name not in best or r.seconds < best[name].seconds:
                        best[name] = r
                    shutil.rmtree(server.volume, ignore_errors=True)
                    (server.volume / ".tmp").mkdir(parents=True, exist_ok=True)
                pair_ratios.append(times[contenders[0][0]] / times[contenders[1][0]])
            results = [best[name] for name, _, _ in contenders]
            report(f"NGAS archive of {args.size / 2**20:.0f} MiB to the fake NGAS on loopback (best of "
                   f"{args.repeat})", results, baseline="plain httpx streaming POST")
            ratio = statistics.median(pair_ratios)
            print(f"throughput ratio ours/plain: median of {len(pair_ratios)} back-to-back pairs = {ratio:.2f} "
                  f"(pairs: {', '.join(f'{x:.2f}' for x in pair_ratios)}; target >= {TARGET_RATIO})")
            if args.rss_size:
                src.unlink()
                big = make_sample_file(scratch / "big.bin", args.rss_size)
                r = run_python(f"ours at {args.rss_size / 2**20:.0f} MiB", ours, server.url, str(big),
                               args.crc_variant, nbytes=args.rss_size)
                report("peak RSS does not grow with file size", [results[1], r], baseline=results[1].name)
                print(f"peak RSS {results[1].peak_rss / 2**20:.1f} MiB at {args.size / 2**20:.0f} MiB vs "
                      f"{r.peak_rss / 2**20:.1f} MiB at {args.rss_size / 2**20:.0f} MiB")
        return 0 if ratio >= TARGET_RATIO else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(server_root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
