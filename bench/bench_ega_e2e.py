"""EGA end to end, as a user waits for it: ``python flows/run.py ega --message M.json`` against the tools.

Side by side in one run, interleaved, on a fresh INGEST_HOME whose local API and warm runner are up:

* ours: the whole command (decrypt + re-encrypt + hashes in one pass, a rename into the
  filesystem vault, one verifying read, registry, events, status message, report);
* the tools: ``tee|md5sum``, ``gpg -d``, ``tee|sha256sum|md5sum``, ``crypt4gh encrypt``, then
  ``cp`` into a vault directory and ``sha256sum`` of the copy;
* ``gpg -d > file`` alone, the floor of any pipeline;
* with ``--s3``: ours into an S3 vault on a moto server (the copy is a multipart upload, hashed as
  it goes, then read back once).

Peak RSS of our call is the fork's VmHWM (runner.log), which includes the runner's imported
modules shared with it; what matters is that it does not grow with the file. Peak private is
what the call itself adds to the machine (Private_Clean + Private_Dirty, sampled every 0.2 s).
Targets (issue 16): >= 2x the tools at 512 MiB and 2 GiB, 1 MiB within 2x of the tools.
Not a test: run it by hand on a quiet machine, e.g. ``--sizes 1,512,2048 --repeat 3 --s3``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_cli import EgaSide, cli  # noqa: E402


def fresh_home(work: Path, name: str, *init_args: str) -> tuple[dict[str, str], Path]:
    home = work / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(INGEST_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    cli(env, "init", *init_args)
    deadline = time.monotonic() + 120
    while not (home / "prefect" / "runner.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return env, home


def last_call_rss(home: Path) -> tuple[float, float]:
    """(peak RSS, peak private memory) of the last call, in MiB, from runner.log."""
    lines = [ln for ln in (home / "prefect" / "runner.log").read_text().splitlines() if "peak RSS" in ln]
    rss = re.search(r"peak RSS ([0-9.]+) MiB", lines[-1]) if lines else None
    private = re.search(r"peak private ([0-9.]+) MiB", lines[-1]) if lines else None
    return (float(rss.group(1)) if rss else float("nan"), float(private.group(1)) if private else float("nan"))


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(100):
        try:
            httpx.get(endpoint, timeout=1)
            return proc, endpoint
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("moto server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,512,2048", help="MiB, comma separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="also 512 MiB into an S3 vault on moto")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-ega-e2e-", dir=args.dir))
    homes: list[dict[str, str]] = []
    moto = None
    try:
        env, home = fresh_home(work, "home")
        homes.append(env)
        side = EgaSide(env, home, work)
        rows = []
        for size in sizes:
            ours, tools, floor, rss = [], [], [], []
            for _ in range(args.repeat):
                msg, message = side.upload(size)
                tools.append(side.tools(message))
                floor.append(side.gpg_floor(message))
                ours.append(side.ours(msg)[0])
                rss.append(last_call_rss(home))
            rows.append((size, statistics.median(ours), statistics.median(tools), statistics.median(floor),
                         max(r for r, _ in rss), max(p for _, p in rss)))
            print(f"{size} MiB: ours {ours}, tools {tools}, gpg -d {floor}", flush=True)
        print("\n## EGA end to end, filesystem vault (medians)")
        print(f"{'upload':>9} {'ours s':>8} {'tools s':>8} {'speed vs tools':>15} {'gpg -d > file s':>16} "
              f"{'ours vs gpg -d':>15} {'peak RSS MiB':>13} {'peak private MiB':>17}")
        for size, o, t, f, r, pv in rows:
            print(f"{size:>5} MiB {o:8.3f} {t:8.3f} {t / o:14.2f}x {f:16.3f} {f / o:14.2f}x {r:13.1f} {pv:17.1f}")
        if args.s3:
            import boto3

            moto, endpoint = start_moto()
            os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                              AWS_DEFAULT_REGION="us-east-1")
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench-vault")
            env3, home3 = fresh_home(work, "home-s3", "--s3-bucket", "bench-vault", "--s3-endpoint", endpoint)
            homes.append(env3)
            side3 = EgaSide(env3, home3, work / "s3", tools_vault=work / "s3-tools-vault")
            ours3, tools3 = [], []
            for _ in range(args.repeat):
                msg, message = side3.upload(512)
                tools3.append(side3.tools(message))
                elapsed, result = side3.ours(msg)
                assert result["vault_uri"].startswith("s3://"), result
                ours3.append(elapsed)
            side3.close()
            o, t = statistics.median(ours3), statistics.median(tools3)
            print(f"\n## 512 MiB into an S3 vault (moto on loopback): ours {o:.3f} s, tools into a directory "
                  f"{t:.3f} s: {t / o:.2f}x")
        side.close()
    finally:
        for env in homes:
            cli(env, "server", "stop", check=False)
        if moto is not None:
            moto.terminate()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
