"""EGA crypto, side by side: our one-pass re-encryption vs the reference tools.

    python bench/bench_ega_crypto.py --size 1024          # MiB of plaintext, AES-256, uncompressed
    python bench/bench_ega_crypto.py --size 4096 --only-ours   # RSS at a bigger size

Contenders (each in its own process, files warm in the page cache):

* ``gpg -d`` to /dev/null and to a file: the decryption floor;
* the reference pipeline, what an operator would script with the tools:
  ``tee >(md5sum) < f.gpg | gpg -d | tee >(sha256sum) >(md5sum) | crypt4gh encrypt > f.c4gh``;
* ours: ``tasks.crypto.reencrypt`` to a file (key loading included), which
  also produces the sha256 of the written Crypt4GH bytes the pipeline lacks;
* Crypt4GH encryption alone: the ``crypt4gh`` package's ``lib.encrypt`` vs
  our ``tasks.c4gh.encrypt_stream`` on the plaintext, both to /dev/null.

All checksums of the reference pipeline and ours are compared. Everything is
created under ``--dir`` and removed at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Result, report, run_command, run_python  # noqa: E402

PASSPHRASE = "bench-passphrase"


def ours_reencrypt(keys_dir: str, src: str, dst: str, block_size: int) -> dict:
    from tasks.crypto import reencrypt
    from tasks.keys import load_c4gh_public_key, load_pgp_private_key

    key = load_pgp_private_key(Path(keys_dir, "ega.sec.asc").read_text(), PASSPHRASE)
    vault = load_c4gh_public_key(Path(keys_dir, "vault.c4gh.pub"))
    with open(src, "rb", buffering=0) as fin, open(dst, "wb") as fout:
        # The flow's configuration, and the reference pipeline's work: md5 of the ciphertext,
        # sha256 + md5 of the plaintext (the output is hashed by the vault put that re-reads it).
        r = reencrypt(fin, fout, key, vault, block_size=block_size, encrypted_algorithms=("md5",),
                      hash_output=False)
    return {"enc_md5": r.encrypted.checksums["md5"],
            "plain_sha256": r.plaintext.checksums["sha256"], "plain_md5": r.plaintext.checksums["md5"],
            "plain_size": r.plaintext.size, "out_size": r.output_size, "out_sha256": r.output_sha256}


def ours_encrypt(keys_dir: str, src: str) -> int:
    from tasks.c4gh import encrypt_stream
    from tasks.keys import load_c4gh_public_key

    with open(src, "rb", buffering=0) as fin, open(os.devnull, "wb") as fout:
        return encrypt_stream(fin, fout, [load_c4gh_public_key(Path(keys_dir, "vault.c4gh.pub"))])


def package_encrypt(keys_dir: str, src: str) -> None:
    from crypt4gh import lib
    from crypt4gh.keys import get_public_key

    pk = get_public_key(str(Path(keys_dir, "vault.c4gh.pub")))
    with open(src, "rb") as fin, open(os.devnull, "wb") as fout:
        lib.encrypt([(0, os.urandom(32), pk)], fin, fout)


def make_inputs(work: Path, size_mib: int, gnupg: Path) -> tuple[Path, Path, Path]:
    from tasks.keys import ensure_c4gh_keypair, ensure_pgp_keypair

    keys = work / "keys"
    ensure_pgp_keypair(keys, PASSPHRASE)
    ensure_c4gh_keypair(keys, PASSPHRASE)
    env = {**os.environ, "GNUPGHOME": str(gnupg)}
    gpg = ["gpg", "--batch", "--yes", "--quiet", "--trust-model", "always", "--pinentry-mode", "loopback",
           "--passphrase", PASSPHRASE]
    subprocess.run(gpg + ["--import", str(keys / "ega.sec.asc")], env=env, check=True, capture_output=True)
    plain = work / "plain.bin"
    chunk = os.urandom(16 << 20)
    with open(plain, "wb") as fh:
        for _ in range(0, size_mib << 20, len(chunk)):
            fh.write(chunk)
    encrypted = work / "plain.bin.gpg"
    subprocess.run(gpg + ["-r", "EGA archive", "--compress-algo", "none", "--cipher-algo", "AES256",
                          "--output", str(encrypted), "--encrypt", str(plain)], env=env, check=True)
    tiny = work / "tiny.gpg"  # start gpg-agent and cache the unlocked key before anything is timed
    subprocess.run(gpg + ["-r", "EGA archive", "--output", str(tiny), "--encrypt"], input=b"x", env=env, check=True)
    subprocess.run(gpg + ["--decrypt", str(tiny)], env=env, check=True, capture_output=True)
    for path in (plain, encrypted):  # warm the page cache for every contender alike
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return keys, plain, encrypted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="MiB of plaintext (default 1024)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the inputs and outputs go")
    parser.add_argument("--block-size", type=int, default=1 << 20, help="our read/decrypt block (bytes)")
    parser.add_argument("--only-ours", action="store_true", help="skip the peers (e.g. for RSS at large sizes)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender, interleaved; the best is kept")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ega-crypto-", dir=args.dir))
    gnupg = work / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = f"GNUPGHOME={gnupg} C4GH_PASSPHRASE={PASSPHRASE}"
    try:
        keys, plain, encrypted = make_inputs(work, args.size, gnupg)
        nbytes = encrypted.stat().st_size
        gpg_d = f"{env} gpg --batch --quiet --pinentry-mode loopback --passphrase {PASSPHRASE} -d {encrypted}"
        s = work / "sums"
        pipeline = (f"{env}; export GNUPGHOME C4GH_PASSPHRASE; "
                    f"tee >(md5sum > {s}.enc_md5) < {encrypted} "
                    f"| gpg --batch --quiet --pinentry-mode loopback --passphrase {PASSPHRASE} -d "
                    f"| tee >(sha256sum > {s}.plain_sha256) >(md5sum > {s}.plain_md5) "
                    f"| crypt4gh encrypt --recipient_pk {keys / 'vault.c4gh.pub'} > {work / 'ref.c4gh'}; wait")
        runs: dict[str, list[Result]] = {}

        def keep(r: Result) -> Result:
            runs.setdefault(r.name, []).append(r)
            return r

        for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere hits every contender alike
            if not args.only_ours:
                keep(run_command("gpg -d > /dev/null", gpg_d, nbytes=nbytes))
                keep(run_command("gpg -d > file", f"{gpg_d} > {work / 'gpg.out'}", nbytes=nbytes))
                (work / "gpg.out").unlink()
            ours = keep(run_python("ours: reencrypt one pass > file", ours_reencrypt, str(keys), str(encrypted),
                                   str(work / "ours.c4gh"), args.block_size, nbytes=nbytes))
            (work / "ours.c4gh").unlink()
            if not args.only_ours:
                keep(run_command("reference: tee|md5sum|gpg|sha256sum|md5sum|crypt4gh", pipeline, nbytes=nbytes))
                ref = {k: Path(f"{s}.{k}").read_text().split()[0] for k in ("enc_md5", "plain_sha256", "plain_md5")}
                mismatch = {k: (v, ours.extra[k]) for k, v in ref.items() if ours.extra[k] != v}
                if mismatch:
                    raise SystemExit(f"checksums differ between the reference pipeline and ours: {mismatch}")
                (work / "ref.c4gh").unlink()
        print(f"ours: {ours.extra}")
        print(f"load average now: {os.getloadavg()[0]:.2f}; best of {args.repeat} run(s) per contender; "
              f"peak RSS per run: " + ", ".join(f"{r.peak_rss / 2**20:.1f}" for r in runs[ours.name]) + " MiB")
        results = [min(rs, key=lambda r: r.seconds) for rs in runs.values()]
        report(f"EGA re-encryption, {args.size} MiB AES-256 uncompressed ({nbytes} bytes)", results,
               baseline=None if args.only_ours else results[-1].name)
        if not args.only_ours:
            enc: dict[str, list[Result]] = {}
            for _ in range(args.repeat):
                for r in (run_python("ours: c4gh.encrypt_stream > /dev/null", ours_encrypt, str(keys), str(plain),
                                     nbytes=plain.stat().st_size),
                          run_python("crypt4gh package lib.encrypt > /dev/null", package_encrypt, str(keys),
                                     str(plain), nbytes=plain.stat().st_size)):
                    enc.setdefault(r.name, []).append(r)
            report(f"Crypt4GH encryption alone, {args.size} MiB", [min(rs, key=lambda r: r.seconds)
                                                                    for rs in enc.values()])
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(gnupg)},
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
