"""EGA end to end, as a user waits for it: ``python flows/run.py ega --message M.json`` against the tools.

Side by side in one run, interleaved, on a fresh INGEST_HOME whose local API and warm runner are up:

* ours: the whole command (decrypt + re-encrypt + hashes in one pass, a rename into the
  filesystem vault, one verifying read, registry, events, status message, report);
* the tools: ``tee|md5sum``, ``gpg -d``, ``tee|sha256sum|md5sum``, ``crypt4gh encrypt``, then
  ``cp`` into a vault directory and ``sha256sum`` of the copy;
* ``gpg -d > file`` alone, the floor of any pipeline;
* with ``--s3``: ours into an S3 vault on a moto server (the copy is a multipart upload, hashed as
  it goes, then read back once).

Memory, three figures per size (the largest of the repeats):

* byte pass peak RSS: VmHWM of the child process that reads, decrypts, hashes and re-encrypts
  every byte (``tasks.reencrypt_child`` reads it from /proc/self/status at its end; the step logs it).
  Uploads under 1 GiB are passed in the call's own process ("in the call");
* call peak RSS: the warm runner's fork's VmHWM (runner.log), which includes the runner's imported
  modules (Prefect and its libraries, ~185 MiB) shared with it;
* call peak private: what the call itself adds to the machine (Private_Clean + Private_Dirty,
  sampled every 0.2 s).

The home runs at Prefect's default INFO log level, as a user's does: the byte pass's figure is in
the step's log line on the call's stderr.

``--spawn`` also times the byte pass alone on the smallest size, in this process against in a child
(started before the key unlock, as the step does): the child's fixed cost.
Targets (issue 16): >= 2x the tools at 512 MiB and 2 GiB, 1 MiB within 2x of the tools, byte pass
<= 64 MiB at 2 GiB. Not a test: run it by hand on a quiet machine, e.g.
``--sizes 1,512,2048 --repeat 3 --s3``; ``--compress zlib`` encrypts the uploads as gpg does by default.
"""
from __future__ import annotations

import argparse
import json
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
    env.update(INGEST_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cli(env, "init", *init_args)
    deadline = time.monotonic() + 120
    while not (home / "prefect" / "runner.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return env, home


def _exit_lines(home: Path) -> list[str]:
    try:
        return [ln for ln in (home / "prefect" / "runner.log").read_text().splitlines() if "peak RSS" in ln]
    except OSError:
        return []


def last_call_rss(home: Path, seen: int) -> tuple[float, float]:
    """(peak RSS, peak private memory) of the last call, in MiB, from runner.log. A fork logs its line
    when it exits, after it answered its caller (it ships the report, logs and events after): wait
    for more than ``seen`` lines."""
    deadline = time.monotonic() + 10
    while len(lines := _exit_lines(home)) <= seen and time.monotonic() < deadline:
        time.sleep(0.05)
    rss = re.search(r"peak RSS ([0-9.]+) MiB", lines[-1]) if lines else None
    private = re.search(r"peak private ([0-9.]+) MiB", lines[-1]) if lines else None
    return (float(rss.group(1)) if rss else float("nan"), float(private.group(1)) if private else float("nan"))


BYTE_PASS_RSS = re.compile(r"byte pass peak RSS ([0-9.]+) MiB")


def ours(env: dict[str, str], msg: Path) -> tuple[float, float]:
    """The whole command, and the byte pass's peak RSS from the step's log line."""
    elapsed, proc = cli(env, "ega", "--message", str(msg))
    result = json.loads(proc.stdout.splitlines()[-1])
    if result["state"] != "COMPLETED":
        raise SystemExit(f"ingest failed: {result}")
    found = BYTE_PASS_RSS.findall(proc.stderr)
    return elapsed, float(found[-1]) if found else float("nan")


def spawn_cost(home: Path, upload: Path, repeat: int) -> None:
    """The byte pass alone, as the step runs it (key unlock included), in this process and in a child."""
    from tasks.crypto import reencrypt
    from tasks.keys import load_c4gh_public_key, load_pgp_private_key
    from tasks.reencrypt_process import ReencryptProcess

    keys = home / "keys"
    armored, passphrase = (keys / "ega.sec.asc").read_text(), (keys / "passphrase").read_text().strip()
    vault_key = load_c4gh_public_key(keys / "vault.c4gh.pub")
    out = upload.with_suffix(".bench.c4gh")
    here, child = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with open(upload, "rb") as src, open(out, "wb") as dst:
            reencrypt(src, dst, load_pgp_private_key(armored, passphrase), vault_key)
        here.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with open(upload, "rb") as src, open(out, "wb") as dst, ReencryptProcess(src, dst) as byte_pass:
            byte_pass.run(load_pgp_private_key(armored, passphrase), vault_key)
        child.append(time.perf_counter() - t0)
    out.unlink()
    h, c = statistics.median(here), statistics.median(child)
    print(f"\n## The byte pass alone, {upload.stat().st_size:,} bytes (medians of {repeat}): in this process "
          f"{h:.3f} s, in a child process {c:.3f} s: the child costs {c - h:+.3f} s")


def gpg_retrying(run, side: EgaSide, message: dict) -> float:
    """A gpg contender (``side.tools`` or ``side.gpg_floor``); up to twice more after importing the key
    again when gpg loses it (its agent does, on a loaded machine: "decryption failed: No secret key")."""
    for attempt in range(3):
        try:
            return run(message)
        except (SystemExit, subprocess.CalledProcessError) as exc:
            if attempt == 2:
                raise
            print(f"gpg failed ({exc}); importing the key again and retrying", flush=True)
            subprocess.run(f"{side.gpg} --import {side.keys / 'ega.sec.asc'}", shell=True, capture_output=True)
            time.sleep(1)
    raise AssertionError("unreachable")


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
    parser.add_argument("--compress", default="none", choices=("none", "zlib", "zip"),
                        help="gpg's --compress-algo for the uploads (zlib: gpg's default for random data)")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--spawn", type=int, default=0, metavar="N",
                        help="also time the byte pass alone on the smallest size, N times each way")
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
            times, tools, floor, rss, passes = [], [], [], [], []
            for _ in range(args.repeat):
                msg, message = side.upload(size, args.compress)
                tools.append(gpg_retrying(side.tools, side, message))
                floor.append(gpg_retrying(side.gpg_floor, side, message))
                seen = len(_exit_lines(home))
                elapsed, byte_pass = ours(env, msg)
                times.append(elapsed)
                passes.append(byte_pass)
                rss.append(last_call_rss(home, seen))
            rows.append((size, statistics.median(times), statistics.median(tools), statistics.median(floor),
                         max(passes), max(r for r, _ in rss), max(p for _, p in rss)))
            print(f"{size} MiB: ours {times}, tools {tools}, gpg -d {floor}, byte pass peak RSS {passes}", flush=True)
            if args.spawn and size == min(sizes):
                spawn_cost(home, side.inbox / message["filepath"], args.spawn)
        print(f"\n## EGA end to end, filesystem vault, gpg --compress-algo {args.compress} (medians; memory: the largest)")
        print(f"{'upload':>9} {'ours s':>8} {'tools s':>8} {'speed vs tools':>15} {'gpg -d > file s':>16} "
              f"{'ours vs gpg -d':>15} {'byte pass peak RSS MiB':>23} {'call peak RSS MiB':>18} "
              f"{'call peak private MiB':>22}")
        for size, o, t, f, bp, r, pv in rows:
            byte_pass = "in the call" if bp != bp else f"{bp:.1f}"  # nan: the pass ran in the call's process
            print(f"{size:>5} MiB {o:8.3f} {t:8.3f} {t / o:14.2f}x {f:16.3f} {f / o:14.2f}x {byte_pass:>23} {r:18.1f} "
                  f"{pv:22.1f}")
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
