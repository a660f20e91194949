"""``python flows/run.py worker``: a Prefect process worker with a warm runner beside it.

The pool's flow-run command (deployments/ops.py) is a launcher, deployments/warm_engine.py, that
hands each run to a warm runner on the worker's machine: a process that has imported Prefect and our
flows once and forks per run (deployments/warm.py). This command keeps both alive together: the
runner on a private socket (a fresh 0700 directory, never the shared INGEST_HOME, which may be on a
network filesystem), and ``prefect worker start`` with INGEST_WARM_SOCKET pointing at it, which its
runs' launchers inherit. A runner that exits (the code changed, a crash) is started again; meanwhile
runs start the cold way, in their own process. SIGTERM or SIGINT stops the worker (Prefect's own
graceful shutdown), then the runner; runs in flight finish, as they would under a plain worker.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deployments.warm_engine import SOCKET_ENV
from deployments.warm_wire import ROOT

STOP_SECONDS = 60.0  # the worker's graceful shutdown, then SIGKILL
RESTARTS_PER_MINUTE = 3
DIR_PREFIX = "ingest-worker-"  # the runner's private socket directory, under the temp directory
ORPHAN_SECONDS = 600.0


class WorkerWithRunner:
    def __init__(self, home: Path, worker_args: list[str], warm: bool = True) -> None:
        self.home = home
        self.worker_args = worker_args
        self.warm = warm
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.socket = self.dir / "runner.sock"
        self.runner: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None
        self.starts: list[float] = []
        self.stopping = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # "python3" in the pool's command is this interpreter, whatever the caller's PATH put first
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if self.warm:
            env[SOCKET_ENV] = str(self.socket)
        else:
            env.pop(SOCKET_ENV, None)
        return env

    def start_runner(self) -> None:
        now = time.monotonic()
        self.starts = [t for t in self.starts if now - t < 60]
        if len(self.starts) >= RESTARTS_PER_MINUTE:
            return  # it keeps dying: runs start in their own process until it settles
        self.starts.append(now)
        self.runner = subprocess.Popen(
            [sys.executable, "-m", "deployments.warm", "--home", str(self.home), "--socket", str(self.socket),
             "--parent", str(os.getpid())], cwd=ROOT, env=self.env(), stdin=subprocess.DEVNULL)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._stop)
        try:
            if self.warm:
                self.start_runner()
            self.worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", *self.worker_args],
                                           env=self.env(), stdin=subprocess.DEVNULL)
            while self.worker.poll() is None:
                if self.stopping:
                    self._stop_worker()
                    break
                if self.warm and (self.runner is None or self.runner.poll() is not None):
                    self.start_runner()
                time.sleep(0.5)
            if self.stopping:
                return 0  # stopped as asked
            return self.worker.returncode if self.worker.returncode is not None else 1
        finally:
            self._stop_worker()
            self._stop_runner()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = signum

    def _stop_worker(self) -> None:
        if self.worker is None or self.worker.poll() is not None:
            return
        self.worker.send_signal(signal.SIGTERM)  # Prefect's graceful stop (Ctrl-C reached it already)
        try:
            self.worker.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()

    def _stop_runner(self) -> None:
        if self.runner is None or self.runner.poll() is not None:
            return
        self.runner.terminate()  # its forks are runs, each tied to its launcher: they finish on their own
        try:
            self.runner.wait(10)
        except subprocess.TimeoutExpired:
            self.runner.kill()
            self.runner.wait()


def sweep_stale_dirs(parent: Path | None = None) -> list[Path]:
    """Remove the socket directories of worker commands that were SIGKILLed (a stopped one removes its
    own): those whose runner lock nobody holds, or, without a lock, that are old and empty."""
    import fcntl

    removed = []
    for path in Path(parent or tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            if not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            lock = path / "runner.lock"
            if lock.exists():
                with open(lock, "a") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live runner holds it
            elif any(path.iterdir()) or time.time() - path.stat().st_mtime < ORPHAN_SECONDS:
                continue  # a worker that is just starting, or something we do not know
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except OSError:
            continue
    return removed


def run_worker(home: Path, worker_args: list[str], warm: bool = True) -> int:
    sweep_stale_dirs()
    return WorkerWithRunner(home, worker_args, warm).run()
