"""Side-by-side benchmark harness: ours and the peer in one run, ratios and peak RSS.

Each contender runs in its own fresh process (spawned interpreter or external
command) so its peak RSS is its own and not the harness's.
"""
from __future__ import annotations

import multiprocessing as mp
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Result:
    name: str
    seconds: float
    peak_rss: int  # bytes
    nbytes: int = 0
    extra: Any = None

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds and self.nbytes else 0.0


def peak_rss_self() -> int:
    """VmHWM: the peak RSS of this process's own address space (ru_maxrss would include the
    parent's high-water mark inherited across fork+exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(fn: Callable, args: tuple, queue: mp.Queue) -> None:
    t0 = time.perf_counter()
    extra = fn(*args)
    elapsed = time.perf_counter() - t0
    queue.put((elapsed, peak_rss_self(), extra))


def run_python(name: str, fn: Callable, *args: Any, nbytes: int = 0) -> Result:
    """Run ``fn(*args)`` in a spawned interpreter; time excludes interpreter start."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    elapsed, rss, extra = queue.get()
    proc.join()
    if proc.exitcode:
        raise RuntimeError(f"{name} exited with {proc.exitcode}")
    return Result(name, elapsed, rss, nbytes, extra)


def run_command(name: str, argv: Sequence[str] | str, *, nbytes: int = 0, shell: bool = False,
                stdin: Any = None, stdout: Any = subprocess.DEVNULL) -> Result:
    """Run an external command under GNU time; peak RSS is the largest of the command's processes.

    GNU time is a tiny parent, so the RSS it reports is the command's, not inherited from us.
    Commands always run through bash, so ``shell`` only documents that ``argv`` is a pipeline.
    """
    import shlex
    import tempfile

    cmd = argv if isinstance(argv, str) else shlex.join(argv)
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
        full = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name, "/bin/bash", "-c", cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(full, stdin=stdin, stdout=stdout)
        elapsed = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"{name} failed with status {proc.returncode}")
        text = rss_file.read().strip().splitlines()
        rss = int(text[-1]) * 1024 if text and text[-1].isdigit() else 0
    return Result(name, elapsed, rss, nbytes)


def report(title: str, results: Sequence[Result], baseline: str | None = None) -> str:
    """Print a table; ratios are speed relative to ``baseline`` (default: the last row)."""
    base = next((r for r in results if r.name == baseline), results[-1])
    lines = [f"## {title}", f"{'contender':40} {'seconds':>9} {'MB/s':>9} {'peak RSS MiB':>13} {'speed vs ' + base.name:>20}"]
    for r in results:
        ratio = base.seconds / r.seconds if r.seconds else float("inf")
        lines.append(f"{r.name:40} {r.seconds:9.3f} {r.mb_per_s:9.1f} {r.peak_rss / 2**20:13.1f} {ratio:19.2f}x")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_random_cube(path, shape: tuple[int, ...], header: Any, extensions: Sequence[Any]) -> Any:
    """A real (non-sparse) FITS cube with CHECKSUM/DATASUM, written scan by scan through a memmap.

    Random float32 data so nothing compresses; memory stays at one scan whatever the size.
    """
    import numpy as np
    from astropy.io import fits

    raw_path = path.with_name(path.name + ".raw")
    raw = np.memmap(raw_path, dtype=">f4", mode="w+", shape=shape)
    for s in range(shape[0]):
        raw[s] = np.random.default_rng(s).random(shape[1:], dtype=np.float32)
    raw.flush()
    fits.HDUList([fits.PrimaryHDU(data=raw, header=header), *extensions]).writeto(path, checksum=True)
    del raw
    raw_path.unlink()
    return path

