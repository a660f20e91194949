"""The local CLI as a user runs it: whole ``python flows/run.py …`` commands, timed end to end.

Side by side in one run, on a fresh INGEST_HOME:

* the first call on a fresh home (it starts the shared local Prefect API) and ``server status``;
* ``fits PATH`` on an unchanged cube (target: median <= 1.5 s);
* ``ega --message`` for a 1 MiB upload, against the tool pipeline doing the same work
  (tee|md5sum, gpg -d, tee|sha256sum|md5sum, crypt4gh encrypt, cp into the vault, sha256sum of
  the copy); target: within 2x of the tools;
* N small bags in one ``apt`` batch call against N single ``apt`` calls;
* what a call spends before its flow's first task (python start, imports, API check, blocks, registry).

Not a test: run it by hand on a quiet machine. ``--repeat`` runs per contender, interleaved; medians.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(ROOT / "flows" / "run.py")]


def cli(env: dict[str, str], *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([*RUN, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if check and proc.returncode:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed, proc


def shell(cmd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["/bin/bash", "-c", cmd], check=True)
    return time.perf_counter() - t0


def line(name: str, times: list[float], extra: str = "") -> None:
    print(f"  {name:58} median {statistics.median(times):7.3f} s  (min {min(times):.3f}, n={len(times)}) {extra}",
          flush=True)


def bench_fits(env: dict[str, str], home: Path, repeat: int) -> float:
    sys.path.insert(0, str(ROOT))
    from flows.fits.samples import write_sample_cube

    cube = write_sample_cube(home / "science" / "bench" / "CRISP")
    rel = str(cube.relative_to(home / "science"))
    first, _ = cli(env, "fits", rel)
    times, cold = [], []
    for _ in range(repeat):  # interleaved
        times.append(cli(env, "fits", rel)[0])
        cold.append(cli({**env, "INGEST_WARM_RUNNER": "0"}, "fits", rel)[0])
    print("## FITS: python flows/run.py fits PATH")
    line("first ingest (with previews)", [first])
    line("unchanged cube", times, "target <= 1.5 s")
    line("unchanged cube, each call importing everything itself", cold, "(INGEST_WARM_RUNNER=0)")
    return statistics.median(times)


def bench_sqlite(work: Path, repeat: int, pg_median: float) -> None:
    """The same unchanged-cube calls with the local API on Prefect's SQLite: why it is not the default."""
    home = work / "home-sqlite"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(INGEST_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    (home / "prefect").mkdir(parents=True)  # where `init --prefect-database` records a database, but SQLite
    (home / "prefect" / "profiles.toml").write_text(
        'active = "ephemeral"\n[profiles.ephemeral]\n'
        f'PREFECT_SERVER_DATABASE_CONNECTION_URL = "sqlite+aiosqlite:///{home}/prefect/prefect.db"\n')
    try:
        cli(env, "init")
        from flows.fits.samples import write_sample_cube

        cube = write_sample_cube(home / "science" / "bench" / "CRISP")
        rel = str(cube.relative_to(home / "science"))
        cli(env, "fits", rel)
        times = [cli(env, "fits", rel)[0] for _ in range(repeat)]
        print("## The local API's database: the same unchanged-cube call on Prefect's SQLite")
        line("unchanged cube, local API on SQLite", times,
             f"(on the embedded PostgreSQL: {pg_median:.3f} s)")
    finally:
        cli(env, "server", "stop", check=False)


class EgaSide:
    """EGA uploads for one home, and the two ways to ingest one: our command and the tool pipeline.

    The tools do the same work as the flow: md5 of the upload, gpg -d, sha256 and md5 of the
    plaintext, crypt4gh encrypt, a copy into the (tools') vault and a sha256sum of that copy.
    """

    def __init__(self, env: dict[str, str], home: Path, work: Path, tools_vault: Path | None = None) -> None:
        self.env, self.home, self.work = env, home, work
        self.keys = home / "keys"
        self.passphrase = (self.keys / "passphrase").read_text().strip()
        self.gnupg = work / "gnupg"
        self.gnupg.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.gpg = (f"gpg --homedir {self.gnupg} --batch --quiet --yes --pinentry-mode loopback "
                    f"--passphrase-file {self.keys / 'passphrase'}")
        subprocess.run(f"{self.gpg} --import {self.keys / 'ega.sec.asc'}", shell=True, check=True,
                       capture_output=True)
        self.inbox = home / "inbox" / "bench"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.tools_vault = tools_vault or work / "tools-vault"
        self.tools_vault.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def upload(self, size_mib: int, compress: str = "none") -> tuple[Path, dict]:
        """A random file of ``size_mib`` encrypted to the archive key with gpg (``compress``: gpg's
        ``--compress-algo``; its default for a file it cannot tell is compressed is ZLIB), and its message."""
        self.count += 1
        plain = self.work / "plain.bin"
        with open(plain, "wb") as fh:
            for _ in range(size_mib):
                fh.write(os.urandom(1 << 20))
        encrypted = self.inbox / f"upload{self.count}.bin.gpg"
        subprocess.run(f"gpg --homedir {self.gnupg} --batch --quiet --yes --trust-model always --cipher-algo "
                       f"AES256 --compress-algo {compress} --recipient-file {self.keys / 'ega.pub.asc'} "
                       f"-o {encrypted} --encrypt {plain}", shell=True, check=True)
        message = {"user": "bench", "filepath": encrypted.name, "stable_id": f"EGAFB{os.getpid()}{self.count:05d}",
                   "encrypted_integrity": {"checksum": _file_hash(encrypted, "md5"), "algorithm": "md5"},
                   "unencrypted_integrity": {"checksum": _file_hash(plain, "sha256"), "algorithm": "sha256"}}
        plain.unlink()
        msg = self.work / f"message{self.count}.json"
        msg.write_text(json.dumps(message))
        return msg, message

    def tools(self, message: dict) -> float:
        encrypted = self.inbox / message["filepath"]
        s = self.work / "sums"
        out = self.work / "tools.c4gh"
        pipeline = (f"set -o pipefail; export C4GH_PASSPHRASE={shlex.quote(self.passphrase)}; "
                    f"tee >(md5sum > {s}.enc_md5) < {encrypted} "
                    f"| {self.gpg} -d | tee >(sha256sum > {s}.plain_sha256) >(md5sum > {s}.plain_md5) "
                    f"| crypt4gh encrypt --recipient_pk {self.keys / 'vault.c4gh.pub'} > {out}; wait; "
                    f"cp {out} {self.tools_vault}/ && sha256sum {self.tools_vault / out.name} > /dev/null")
        if not (self.work / ".unlocked").exists():  # start gpg-agent with the key before anything is timed
            for _ in range(3):
                try:
                    shell(pipeline)
                    break
                except subprocess.CalledProcessError:  # a fresh agent sometimes misses the key once: import again
                    subprocess.run(f"{self.gpg} --import {self.keys / 'ega.sec.asc'}", shell=True,
                                   capture_output=True)
            (self.work / ".unlocked").touch()
        elapsed = shell(pipeline)
        if Path(f"{s}.plain_sha256").read_text().split()[0] != message["unencrypted_integrity"]["checksum"]:
            raise SystemExit("the tool pipeline did not decrypt the upload")
        out.unlink()
        (self.tools_vault / out.name).unlink()
        return elapsed

    def gpg_floor(self, message: dict) -> float:
        """``gpg -d > file``: the decryption alone, the floor of any pipeline."""
        out = self.work / "gpg.out"
        elapsed = shell(f"{self.gpg} -d {self.inbox / message['filepath']} > {out}")
        out.unlink()
        return elapsed

    def ours(self, msg: Path, env: dict[str, str] | None = None) -> tuple[float, dict]:
        elapsed, proc = cli(env or self.env, "ega", "--message", str(msg))
        result = json.loads(proc.stdout.splitlines()[-1])
        if result["state"] != "COMPLETED":
            raise SystemExit(f"ingest failed: {result}")
        return elapsed, result

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.gnupg), "--kill", "all"], capture_output=True)


def _file_hash(path: Path, algorithm: str) -> str:
    from tasks.checksum import hash_file

    return hash_file(path, (algorithm,)).checksums[algorithm]


def bench_ega(env: dict[str, str], home: Path, work: Path, repeat: int, size_mib: int) -> float:
    side = EgaSide(env, home, work)
    ours, tools = [], []
    try:
        for _ in range(repeat):
            msg, message = side.upload(size_mib)
            tools.append(side.tools(message))
            ours.append(side.ours(msg)[0])
    finally:
        side.close()
    print(f"## EGA: python flows/run.py ega --message (a {size_mib} MiB upload, filesystem vault)")
    line("ours, the whole command", ours)
    line("tools: tee|md5sum, gpg -d, sha256sum, md5sum, crypt4gh, cp, sha256sum", tools)
    ratio = statistics.median(ours) / statistics.median(tools)
    print(f"  ours / tools = {ratio:.2f}x the tools' time (target <= 2x)")
    return ratio


def bench_apt(env: dict[str, str], work: Path, bags: int) -> float:
    from flows.apt.samples import build_bag

    def make(prefix: str) -> list[Path]:
        root = work / prefix
        root.mkdir()
        return [build_bag(root, f"test.edu.{prefix}_{i:02d}", title=f"Bag {i}") for i in range(bags)]

    singles, batch = make("single"), make("batch")
    t0 = time.perf_counter()
    for tar in singles:
        cli(env, "apt", str(tar))
    single_total = time.perf_counter() - t0
    batch_total, proc = cli(env, "apt", *map(str, batch), "--concurrency", "2")
    assert len(proc.stdout.splitlines()) == bags
    print(f"## APT: {bags} small bags")
    line(f"{bags} single 'apt BAG' calls", [single_total])
    line("one 'apt BAG…' batch call (--concurrency 2)", [batch_total])
    print(f"  batch is {single_total / batch_total:.2f}x faster than single calls")
    return single_total / batch_total


_BREAKDOWN = r"""
import json, sys, time
t = {"start": time.perf_counter()}
sys.path.insert(0, sys.argv[1])
import tasks
from flows import commands
t["cli modules"] = time.perf_counter()
from deployments.localapi import ensure
ensure(announce=False)
t["local API found (health check)"] = time.perf_counter()
import prefect
t["import prefect"] = time.perf_counter()
import flows.fits.flow, flows.ega.flow
t["import flow modules"] = time.perf_counter()
from flows.fits.steps import load_config
cfg = load_config("default")
t["blocks loaded + registry connected"] = time.perf_counter()
import astropy.io.fits
t["import astropy"] = time.perf_counter()
names = list(t)
print(json.dumps({n: t[n] - t[p] for p, n in zip(names, names[1:])}))
"""


def breakdown(env: dict[str, str], repeat: int) -> None:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    python_start = time.perf_counter() - t0
    proc = subprocess.run([sys.executable, "-c", _BREAKDOWN, str(ROOT)], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True)
    parts = json.loads(proc.stdout.splitlines()[-1])
    print("## Before the first task of a call")
    print("  a call in its own process (what the warm runner does once for all calls):")
    print(f"    {'python start':40} {python_start:6.3f} s")
    for name, seconds in parts.items():
        print(f"    {name:40} {seconds:6.3f} s")
    fixed = [cli(env, "outbox", "show")[0] for _ in range(repeat)]
    print(f"  a call through the warm runner: {statistics.median(fixed):.3f} s for a command that does no work "
          f"('outbox show': python start, CLI modules, API health check, fork, exit status)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bags", type=int, default=26)
    parser.add_argument("--ega-mib", type=int, default=1)
    parser.add_argument("--skip", action="append", default=[], choices=["fits", "ega", "apt"])
    parser.add_argument("--sqlite", action="store_true", help="also time unchanged cubes with the API on SQLite")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    home = work / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(INGEST_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    os.environ["INGEST_HOME"] = str(home)
    try:
        first, _ = cli(env, "init")
        status_time, proc = cli(env, "server", "status")
        status = json.loads(proc.stdout)
        print("## The shared local API")
        line("first call on a fresh home: init (starts the local API)", [first])
        line("server status", [status_time], f"{status['url']} on {status['database']}")
        if "fits" not in args.skip:
            fits_median = bench_fits(env, home, args.repeat)
            if args.sqlite:
                bench_sqlite(work, args.repeat, fits_median)
        if "ega" not in args.skip:
            bench_ega(env, home, work, args.repeat, args.ega_mib)
        if "apt" not in args.skip:
            bench_apt(env, work, args.bags)
        breakdown(env, args.repeat)
    finally:
        cli(env, "server", "stop", check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
