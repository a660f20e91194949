"""A warm runner per INGEST_HOME: CLI calls run in a fork of a process that has already imported everything.

With the local API shared, what a ``python flows/run.py`` call still spent before its first task
was imports: Prefect (~0.8 s), prefect-aws and boto3 (~0.5 s), astropy (~0.4 s), our modules.
A command that ingests a 1 MiB upload then costs several times the shell tools. So, like
Android's zygote or Mercurial's command server, one process per home imports all of that once
and waits on a Unix socket (``$INGEST_HOME/prefect/runner.sock``). A CLI call sends its argv, cwd,
environment and its stdin/stdout/stderr file descriptors (SCM_RIGHTS); the runner forks, the child
becomes that call (same fds, cwd and environment, Prefect settings re-read) and sends back the
exit code. SIGTERM, SIGINT and SIGHUP sent to the caller are passed on to the fork. If the caller
dies, the fork is interrupted, and the runner kills it after a short grace, so nothing outlives a
killed call but the shared processes.

The runner imports, never connects or starts threads before forking. It holds ``runner.lock`` for
life (one runner per home), exits when the home's local API is gone, and answers ``stale`` when
the code or the interpreter it imported differs from the caller's (the call then runs in-process
and the runner exits, to be started afresh).
"""
from __future__ import annotations

import array
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployments.warm_wire import (
    DISABLE_ENV,
    FORWARDED,
    LEN,
    ROOT,
    SOURCE_DIRS,
    enabled,
    end_line,
    fingerprint,
    read_line,
    run_in_runner,
    sock_path,
)
from tasks.processes import pid_alive

__all__ = ["DISABLE_ENV", "fingerprint", "SOURCE_DIRS", "run_in_runner", "serve", "sock_path", "Supervisor"]
# Besides every module of our own packages: what Prefect imports on a flow's first run, and what our
# steps import inside functions (so that a CLI call that needs them finds them loaded).
PRELOAD = ("prefect", "prefect.flows", "prefect.tasks", "prefect.flow_engine", "prefect.task_engine",
           "prefect.artifacts", "prefect.runtime", "prefect.results", "prefect.transactions",
           "prefect.cache_policies", "prefect.events.worker", "prefect.events.clients", "prefect.logging.handlers",
           "prefect.client.orchestration", "prefect.client.schemas.objects", "prefect.settings",
           "prefect.logging.configuration", "prefect.blocks.core", "prefect.concurrency.sync",
           "astropy.io.fits", "astropy.wcs", "numpy", "psycopg", "httpx", "pika", "boto3",
           "botocore.client", "pgpy", "pgserver", "cryptography.hazmat.primitives.ciphers.aead",
           "cryptography.hazmat.decrepit.ciphers.modes", "crypt4gh", "jsonschema", "crc32c",
           "psutil", "bagit", "PIL.Image", "matplotlib", "matplotlib.cm", "prefect_aws",
           "fastapi", "fastapi.encoders", "crypt4gh.keys", "prefect.utilities.visualization",
           # what a deployed run's engine (a worker's launcher, deployments/warm_engine.py) imports
           "prefect.engine", "prefect._internal.control_listener", "prefect._internal.metrics",
           "prefect.filesystems", "prefect.deployments.steps.core", "prefect.utilities.importtools",
           "rich._emoji_codes")  # (what rich's console imports at a run's first log line: 10 ms)
SKIP_PRELOAD = ("deployments.warm", "deployments.warm_engine", "deployments.worker")
GRACE_SECONDS = 3.0
LEARN_AFTER_IDLE_SECONDS = 3.0
LOG_LIMIT = 8 << 20


def lock_path(home: Path) -> Path:
    return home / "prefect" / "runner.lock"


class Supervisor:
    """Run by the home's local API process: keeps one warm runner alive beside it, and stops it at the end."""

    def __init__(self, home: Path, url: str) -> None:
        self.home = home
        self.url = url
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []

    def tick(self) -> None:
        if not enabled() or (self.proc is not None and self.proc.poll() is None):
            return
        now = time.monotonic()
        self.starts = [t for t in self.starts if now - t < 60]
        if len(self.starts) >= 3:
            return  # it keeps dying: calls run in their own process until it settles
        self.starts.append(now)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_SERVER_", "PREFECT_UI_"))}
        env["PREFECT_API_URL"] = self.url  # as its callers have it, so their settings can be prepared once
        log_file = self.home / "prefect" / "runner.log"
        if log_file.exists() and log_file.stat().st_size > LOG_LIMIT:  # two lines a call: keep one old file
            log_file.replace(log_file.with_suffix(".log.1"))
        with open(log_file, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "deployments.warm", "--home", str(self.home)],
                                         cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------- the runner

def _api_alive(home: Path) -> bool:
    from deployments.localapi import _is_our_server, read_state

    state = read_state(home)
    return state is not None and _is_our_server(state)


_HOME: list[Path] = []
_LOCK: list[Any] = []  # the runner's lock file: a fork must close its copy, or the lock outlives the runner
_LOG_FD: list[int] = []  # the runner's own output (its log), kept by forks, whose fds 0-2 are their caller's
_WAKE: list[int] = []  # the SIGCHLD wake-up pipe: a fork's end wakes the runner's poll at once
_ANSWERED = threading.Event()  # in a fork: its caller has its exit status (it may leave now)
# Fork-unsafe: a library whose runtime keeps native threads (Go's, in pygfried) hangs in a fork. Such
# modules are never preloaded; a call imports them itself. Others found by _preload are added at run time.
FORK_UNSAFE = {"pygfried"}


def serve(home: Path, socket_file: Path | None = None, parent: int | None = None) -> int:
    """Serve calls until the home's local API is gone, or, for a worker's runner (``socket_file`` and
    ``parent`` given, see deployments/worker.py), until that parent process is gone."""
    _HOME.append(home)
    path = socket_file or sock_path(home)
    lock = open(path.with_suffix(".lock") if socket_file else lock_path(home), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another runner holds this socket's lock: exiting", flush=True)
        return 0
    _LOCK.append(lock)
    _LOG_FD.append(os.dup(1))
    started = time.monotonic()
    if not _preload():
        return 3  # a module turned out fork-unsafe (now listed): the supervisor starts a runner without it
    _prepare_prefect()
    mine = fingerprint()
    alive: Callable[[], bool] = (lambda: os.getppid() == parent) if parent else (lambda: _api_alive(home))
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)  # a caller hands over its environment and fds: its own user only
    listener.listen(64)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    _WAKE.extend((wake_r, wake_w))
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # we reap forks ourselves, to tell callers how they ended
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through the finally: no stale socket
    if parent:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the worker command, which stops us
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} warm runner pid {os.getpid()} ready in "
          f"{time.monotonic() - started:.1f} s at {path}", flush=True)
    calls = Calls(wake_r)
    try:
        while alive():
            ready = calls.wait(listener, 1.0)
            calls.reap()
            calls.end_abandoned()
            if not ready:
                # learn between calls, once idle a moment: never in the way of a caller that follows at once
                if not calls.active() and calls.idle_seconds() > LEARN_AFTER_IDLE_SECONDS and not _learn(home):
                    print("a learned import is fork-unsafe: exiting, to be started afresh", flush=True)
                    break
                continue
            conn, _ = listener.accept()
            outcome = _serve_one(conn, listener, mine)
            if outcome == "stale":
                print("callers run newer code or another interpreter: exiting", flush=True)
                break
            if isinstance(outcome, tuple):
                calls.add(*outcome)
    finally:
        try:
            if path.exists():
                path.unlink()
            if socket_file and parent and os.getppid() != parent:  # our worker was killed: its private
                # directory goes with us (a live worker starts a fresh runner in it, and removes it itself)
                path.with_suffix(".lock").unlink(missing_ok=True)
                try:
                    path.parent.rmdir()
                except OSError:
                    pass
        finally:
            listener.close()
    return 0


class Calls:
    """The runner's side of each running call: its connection, its fork's pid and the call's kind.

    The runner reaps its forks and tells a caller whose fork died by a signal (``killed <n>``), so a
    worker sees a SIGKILLed run as it would a SIGKILLed process. A fork watches its caller itself, but
    a library call that never releases the GIL would keep that watcher from running; the runner,
    single-threaded and outside the call, ends a fork whose caller has gone: a CLI call after the
    grace period (Ctrl-C cleanup), a deployed run at once (its launcher was killed; so is the run).
    """

    def __init__(self, wake_fd: int) -> None:
        self.conns: dict[int, tuple[socket.socket, int, float | None, str]] = {}
        self.poll = select.poll()
        self.listening = False
        self.wake_fd = wake_fd
        self.poll.register(wake_fd, select.POLLIN)
        self.last_end = 0.0  # when the last call ended (monotonic)

    def add(self, conn: socket.socket, pid: int, kind: str) -> None:
        # Only a hang-up wakes us: data on the connection (signals the caller passes on) is the fork's.
        self.poll.register(conn.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        self.conns[conn.fileno()] = (conn, pid, None, kind)

    def active(self) -> bool:
        return bool(self.conns)

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last_end

    def wait(self, listener: socket.socket, timeout: float) -> bool:
        """Wait for a new caller (True), a fork's end or a hang-up; a hang-up starts that call's grace."""
        if not self.listening:
            self.poll.register(listener.fileno(), select.POLLIN)
            self.listening = True
        new_caller = False
        for fd, _ in self.poll.poll(timeout * 1000):
            if fd == listener.fileno():
                new_caller = True
            elif fd == self.wake_fd:
                try:
                    while os.read(fd, 512):
                        pass
                except BlockingIOError:
                    pass
            elif fd in self.conns:
                conn, pid, _, kind = self.conns[fd]
                self.poll.unregister(fd)
                self.conns[fd] = (conn, pid, time.monotonic(), kind)
        return new_caller

    def reap(self) -> None:
        """Collect ended forks; tell each one's caller how it ended (a fork that exited has already said
        so, and a caller reads only the first end line), and let go of its connection."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for fd, (conn, fork, gone, _) in list(self.conns.items()):
                if fork != pid:
                    continue
                if os.WIFSIGNALED(status):
                    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} fork pid {pid} ended by signal "
                          f"{os.WTERMSIG(status)}", flush=True)
                try:
                    conn.sendall(end_line(status).encode())
                except OSError:
                    pass
                if gone is None:
                    self.poll.unregister(fd)
                conn.close()
                del self.conns[fd]
                self.last_end = time.monotonic()

    def end_abandoned(self) -> None:
        """Kill forks whose callers left: a deployed run's within a second, a CLI call's after the grace."""
        now = time.monotonic()
        for fd, (conn, pid, gone, kind) in list(self.conns.items()):
            if gone is None or not pid_alive(pid):
                continue
            # (a deployed run's fork kills itself on the hang-up; this is the backstop, after a second in
            # which a fork that answered its launcher finishes exiting)
            if now - gone > abandoned_after(kind, _comm(pid) == ANSWERED_COMM):
                print(f"call pid {pid}: its caller went away {now - gone:.0f} s ago; ending it", flush=True)
                _kill_group(pid)


ANSWERED_COMM = "warm-answered"  # a CLI fork's name once its caller has its exit status
ANSWERED_SECONDS = 60.0  # what such a fork gets for its after-answer work (report, logs, events)


def abandoned_after(kind: str, answered: bool) -> float:
    """Seconds after its caller hung up that a fork still running is killed. A CLI call's caller leaves
    as soon as it has its answer, while the fork ships the run's report, logs and events: that fork is
    not abandoned, and gets ANSWERED_SECONDS."""
    if kind == "engine":
        return 1.0
    return ANSWERED_SECONDS if answered else GRACE_SECONDS + 1


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    """SIGKILL a fork and what it started (a deployed run's fork leads its own process group)."""
    try:
        os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def our_modules() -> list[str]:
    names = []
    for package in SOURCE_DIRS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if name not in SKIP_PRELOAD:
                names.append(name)
    return names


def learned_path(home: Path) -> Path:
    return home / "prefect" / "runner-imports.txt"


def _native_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _learned(home: Path) -> tuple[set[str], set[str]]:
    """(modules earlier calls imported, modules found fork-unsafe)."""
    try:
        words = set(learned_path(home).read_text().split())
    except OSError:
        return set(), set()
    unsafe = {w[1:] for w in words if w.startswith("!")}
    return {w for w in words if not w.startswith("!")} - unsafe, unsafe


def _preload(names: list[str] | None = None) -> bool:
    """Import ``names`` (default: everything we know a call needs); False when one started native threads."""
    import importlib
    import warnings

    home = _HOME[0] if _HOME else None
    unsafe = set(FORK_UNSAFE) | (_learned(home)[1] if home else set())
    first = names is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if first:
            importlib.import_module("numpy")  # OpenBLAS starts its pool here; it handles fork itself
        baseline = _native_threads()
        for name in names if names is not None else [*PRELOAD, *our_modules()]:
            if name in unsafe or name.split(".")[0] in unsafe:
                continue
            try:
                importlib.import_module(name)
            except Exception as exc:  # optional: a call that needs it imports it itself
                print(f"preload {name}: {type(exc).__name__}: {exc}", flush=True)
                if not first and home is not None:  # a learned name that is no module (a flow script
                    with open(learned_path(home), "a") as fh:  # Prefect loaded by path): never again
                        fh.write(f"!{name}\n")
            if _native_threads() > baseline:
                print(f"preload {name}: it started native threads, so forks of this process could hang in "
                      f"it; calls will import it themselves", flush=True)
                if home is not None:
                    with open(learned_path(home), "a") as fh:
                        fh.write(f"!{name.split('.')[0]}\n")
                return False
        if first:
            from tasks import embedded_pg

            embedded_pg._pgserver()
    return True


def _learn(home: Path) -> bool:
    """Import what earlier calls had to import themselves (listed in runner-imports.txt), between calls,
    so the next call finds it loaded. False when one of them is fork-unsafe."""
    wanted, _ = _learned(home)
    missing = sorted(name for name in wanted if name not in sys.modules)
    if not missing:
        return True
    ok = _preload(missing)
    print(f"learned {len(missing)} imports from earlier calls", flush=True)
    return ok


def _report_new_imports(home: Path, before: set[str]) -> None:
    """From a finished call: the top-level-importable modules it loaded that the runner had not."""
    wanted, unsafe = _learned(home)
    new = sorted(name for name in set(sys.modules) - before - wanted
                 if not name.startswith(("__", "_")) and sys.modules.get(name) is not None
                 and name.split(".")[0] not in unsafe | FORK_UNSAFE)
    if new:
        with open(learned_path(home), "a") as fh:
            fh.write("\n".join(new) + "\n")


_PREPARED: dict[str, Any] = {}


def _prefect_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


def _prepare_prefect() -> None:
    """The settings a CLI call runs with (no flow heartbeats: a one-shot run pays ~1 s at exit for them),
    computed once for callers whose Prefect environment is the runner's own."""
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    from tasks import botocore_data_reuse, prefect_client_reuse

    prefect_client_reuse.install(prebuild=True)  # every fork inherits the built TLS context
    botocore_data_reuse.prebuild()  # and botocore's parsed S3 model: ~0.2 s per call on an S3 vault
    _complete_models()
    if _HOME:
        from tasks.keys import unlock_home_key

        unlock_home_key(_HOME[0] / "keys")  # as gpg-agent holds it for the shell tools
    ctx = prefect.context.GLOBAL_SETTINGS_CONTEXT
    _PREPARED["env"] = _prefect_env(dict(os.environ))
    _PREPARED["context"] = prefect.context.SettingsContext(
        profile=ctx.profile, settings=ctx.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))


def _complete_models() -> int:
    """Build every imported pydantic model's schema that import left pending (forward references):
    pydantic builds them at a model's first use, ~75 ms of Prefect's models in each EGA call's fork,
    thrown away with the fork. Built here, once, they are inherited."""
    from pydantic import BaseModel

    completed, seen, stack = 0, set(), list(BaseModel.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        stack.extend(cls.__subclasses__())
        if getattr(cls, "__pydantic_complete__", True):
            continue
        try:
            completed += bool(cls.model_rebuild(raise_errors=False))
        except Exception:  # noqa: BLE001 - a model that cannot be built yet is built at its first use, as before
            pass
    return completed


def _serve_one(conn: socket.socket, listener: socket.socket,
               mine: str) -> str | tuple[socket.socket, int, str] | None:
    """Fork a child for one call: (the connection, kept to watch the caller, the fork's pid, the call's
    kind: "cli" or "engine"); "stale"
    when the caller's code differs from ours (we should exit); None when the request failed."""
    fds: list[int] = []
    keep = False
    try:
        conn.settimeout(10)
        msg, ancdata, _, _ = conn.recvmsg(LEN.size, socket.CMSG_SPACE(3 * array.array("i").itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", data[: len(data) - len(data) % 4]))
        (size,) = LEN.unpack(msg)
        body = b""
        while len(body) < size:
            chunk = conn.recv(size - len(body))
            if not chunk:
                raise OSError("caller went away")
            body += chunk
        request = json.loads(body)
        if request.get("fingerprint") != mine or len(fds) != 3:
            conn.sendall(b"stale\n")
            return "stale"
        conn.settimeout(None)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                listener.close()
                for held in _LOCK:
                    held.close()
                _leave_the_runner()
                if request.get("kind") == "engine":
                    _become_the_engine(conn, fds, request)
                else:
                    _become_the_call(conn, fds, request)
            finally:
                os._exit(70)
        kind = "engine" if request.get("kind") == "engine" else "cli"
        what = (f"flow run {request['env'].get('PREFECT__FLOW_RUN_ID')}" if kind == "engine"
                else " ".join(request["argv"][:3]))
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} call pid {pid}: {what}", flush=True)
        keep = True
        return conn, pid, kind  # the child answers the caller
    except (OSError, ValueError) as exc:
        print(f"a caller's request failed: {exc}", flush=True)
        return None
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if not keep:
            conn.close()


def _leave_the_runner() -> None:
    """In a new fork: drop the runner's SIGCHLD wake-up (the call's own subprocesses are its business)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess.run in the call must be able to wait
    for fd in _WAKE:
        try:
            os.close(fd)
        except OSError:
            pass


def _take_over(fds: list[int], request: dict[str, Any]) -> None:
    """Become the caller: its stdin/stdout/stderr, working directory and environment."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    sys.stderr.reconfigure(line_buffering=True)


def _become_the_call(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """A CLI call. It answers its caller (flushed output, then ``exit <code>``) as soon as the command
    is done, and only then ships Prefect's buffered logs and events and runs the exit handlers: the
    user's prompt comes back without waiting for them (~40-60 ms a call)."""
    code = 2
    began = time.monotonic()
    after: tuple[Callable[[], Any], ...] = ()
    try:
        _take_over(fds, request)
        sys.argv = [str(ROOT / "flows" / "run.py"), *request["argv"]]
        parsed = None
        if request.get("unparsed"):
            parsed = _admit(request["argv"])
            if parsed is None:
                conn.sendall(b"refused\n")  # the caller runs it in its own process; nothing ran here
                os._exit(0)
            if isinstance(parsed, int):  # --help, or a usage error argparse has printed
                conn.sendall(b"started\n")
                code = parsed
                return
        _refresh_prefect()
        conn.sendall(b"started\n")
        _watch_caller(conn)
        _watch_private_memory()
        from flows.run import main

        from tasks import after_answer

        after_answer.hold()  # the run's report follows the answer
        loaded = set(sys.modules)
        after = (after_answer.run_held, _drain, lambda: _report_new_imports(_HOME[0], loaded))
        code, _ = _run_body(lambda: main(request["argv"], parsed=parsed, drain=False), interrupted=130)
    finally:
        _end_fork(conn, code, began, answer_first=True, after=after)


def _drain() -> None:
    if "prefect.events.worker" in sys.modules:
        from flows.cli_common import drain_prefect_workers

        drain_prefect_workers()


def _run_body(body: Callable[[], Any], *, interrupted: int) -> tuple[int, int]:
    """Run a fork's body as a process's main would end: (exit code, signal to die by). A Ctrl-C ends a
    CLI call with 130 (``interrupted``); a deployed run's engine (``interrupted=0``) dies by SIGINT, as
    Python does on an uncaught KeyboardInterrupt, so its worker sees what it would see."""
    try:
        result = body()  # a command's exit code; the engine's module globals (it ended normally)
        return (int(result or 0) if isinstance(result, int) or result is None else 0), 0
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)), 0
    except KeyboardInterrupt:
        return (interrupted, 0) if interrupted else (1, signal.SIGINT)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1, 0


def _end_fork(conn: socket.socket, code: int, began: float, *, died_by: int = 0, answer_first: bool = False,
              after: tuple[Callable[[], Any], ...] = ()) -> None:
    """How every fork ends: output flushed, the ``after`` steps and the exit handlers a normal exit runs
    (Prefect's log and event drains, pgserver's user count), one line in the runner's log, and the
    caller told ``exit <code>`` (first, with ``answer_first``), or the fork killed by ``died_by``, which
    the runner reaps and reports as ``killed <n>``. Never returns."""
    # From here on the caller may go away (it has what it needs once the exit line is sent): the
    # watcher's interrupt must not unwind this fork into the runner's own stack.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if answer_first:
        _answer(conn, code, let_go=True)
    import atexit

    for step in (*after, atexit._run_exitfuncs):
        try:
            step()
        except BaseException:
            pass
    _flush()
    _log_exit(code if not died_by else -died_by, time.monotonic() - began)
    if died_by:
        signal.signal(died_by, signal.SIG_DFL)
        os.kill(os.getpid(), died_by)
    if not answer_first:
        _answer(conn, code)
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _answer(conn: socket.socket, code: int, *, let_go: bool = False) -> None:
    """Tell the caller how the call ended. ``let_go``: the fork goes on (after-answer work), so it lets
    go of the caller's stdin, stdout and stderr (later output goes to the runner's log): a caller whose
    output is a pipe sees its end when the caller exits, not when this fork does."""
    _flush()
    _ANSWERED.set()  # the caller may now leave: its watcher must not interrupt what follows
    try:
        conn.sendall(f"exit {code}\n".encode())
    except OSError:
        pass
    if let_go:
        try:
            with open("/proc/self/comm", "w") as fh:  # the runner's backstop leaves an answered call be
                fh.write(ANSWERED_COMM)
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            os.dup2(_LOG_FD[0], 1)
            os.dup2(_LOG_FD[0], 2)
        except (OSError, IndexError):
            pass


ENGINE_GO_SECONDS = 30.0


def _become_the_engine(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """A deployed flow run, for a worker's launcher (deployments/warm_engine.py): ``python -m
    prefect.engine`` with the launcher's environment, cwd and fds. The fork leads a process group of
    its own (what it starts dies with it) and dies at once when its launcher does."""
    code, died_by = 1, 0
    began = time.monotonic()
    after: tuple[Callable[[], Any], ...] = ()
    try:
        os.setpgid(0, 0)
        _take_over(fds, request)
        _set_title(f"prefect flow run {request['env'].get('PREFECT__FLOW_RUN_ID', '?')} (warm fork of "
                   f"{os.getppid()})")
        conn.sendall(f"started {os.getpid()}\n".encode())
        conn.settimeout(ENGINE_GO_SECONDS)
        if read_line(conn) != "go":
            os._exit(0)  # the launcher gave up waiting and runs the flow itself: nothing ran here
        conn.settimeout(None)
        import runpy

        import prefect.context
        import prefect.engine
        from prefect.logging.configuration import setup_logging

        sys.argv = [prefect.engine.__file__]
        sys.modules.pop("prefect.engine", None)  # run a fresh __main__ copy, as Prefect's own bootstrap does
        sys.path[0] = request["cwd"]  # as ``python -m`` in the launcher's cwd
        # never the runner's prepared CLI settings: the pool's env turns heartbeats on, for one
        prefect.context.refresh_global_settings_context()
        setup_logging(incremental=False)
        _watch_caller(conn, grace=0.0)
        _watch_private_memory()
        loaded = set(sys.modules)
        after = (lambda: _report_new_imports(_HOME[0], loaded),)
        code, died_by = _run_body(lambda: runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True),
                                  interrupted=0)
    finally:
        _end_fork(conn, code, began, died_by=died_by, after=after)


def _set_title(title: str) -> None:
    """What ``ps`` shows for this fork (else the runner's command line): the flow run it is. Overwrites
    the process's original argv area in place, as setproctitle does on Linux; best effort."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
        size = end - start
        if size > 1:
            import ctypes

            data = title.encode()[: size - 1]
            ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
        with open("/proc/self/comm", "w") as fh:
            fh.write("warm-flow-run")
    except (OSError, ValueError, IndexError):
        pass


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


_PRIVATE_PEAK = [0.0]  # MiB


def _private_mib() -> float:
    """Memory this process alone holds: what the call adds to the machine (its pages shared with the
    runner, the imports, are counted once, in the runner)."""
    total = 0
    try:
        with open("/proc/self/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
    except OSError:
        return 0.0
    return total / 1024


def _watch_private_memory(interval: float = 0.2) -> None:
    import threading

    def sample() -> None:
        while True:
            _PRIVATE_PEAK[0] = max(_PRIVATE_PEAK[0], _private_mib())
            time.sleep(interval)

    threading.Thread(target=sample, name="memory-watch", daemon=True).start()


def _log_exit(code: int, seconds: float) -> None:
    """One line per call in the runner's log (runner.log; a worker's runner: the worker's output): how it ended, how long it took, its peak memory (the runner's
    own imports, shared with it, included) and the peak of its private memory (sampled every 0.2 s)."""
    try:
        private = max(_PRIVATE_PEAK[0], _private_mib())
        cpu = os.times()  # a fork's own, from its fork on
        os.write(_LOG_FD[0], (f"{time.strftime('%Y-%m-%dT%H:%M:%S')} call pid {os.getpid()} exit {code} "
                              f"after {seconds:.3f} s, cpu {cpu.user + cpu.system:.2f} s, peak RSS "
                              f"{_peak_rss_mib():.1f} MiB, peak private {private:.1f} MiB\n").encode())
    except (OSError, IndexError):
        pass


def _admit(argv: list[str]) -> Any:
    """For a caller that sent its command line unparsed: the parsed arguments to run here, an exit code
    when parsing ended the call, or None when the command runs in the caller's own process. The home's
    API is checked (and PREFECT_API_URL set, as a caller sets it) before Prefect's settings are read."""
    from flows.run import parse_for_runner

    parsed = parse_for_runner(argv)
    if parsed is not None and not isinstance(parsed, int):
        from deployments.localapi import LocalApiError, ensure

        try:
            ensure(caller_env=True)
        except LocalApiError:
            pass  # main() checks again and says why
    return parsed


def _refresh_prefect() -> None:
    """Prefect read its settings (and set up logging) from the runner's environment at import: keep them
    when the caller's Prefect environment is the same, else read the caller's."""
    import prefect.context
    from prefect.logging.configuration import setup_logging

    if _prefect_env(dict(os.environ)) == _PREPARED.get("env"):
        prefect.context.GLOBAL_SETTINGS_CONTEXT = _PREPARED["context"]
        return
    prefect.context.refresh_global_settings_context()
    setup_logging(incremental=False)


def _watch_caller(conn: socket.socket, grace: float = GRACE_SECONDS) -> None:
    """If the caller goes away (killed, Ctrl-C), interrupt this call, then end it after a short grace
    (none for a deployed run: its launcher was killed, so is the run, and what it started)."""
    import _thread

    def watch() -> None:
        pending = b""
        try:
            while chunk := conn.recv(64):
                pending += chunk
                while b"\n" in pending:  # a signal the caller received, passed on
                    line, pending = pending.split(b"\n", 1)
                    if line.startswith(b"signal ") and int(line.split()[1]) in FORWARDED:
                        os.kill(os.getpid(), int(line.split()[1]))
        except (OSError, ValueError):
            pass
        if _ANSWERED.is_set():
            return  # the caller left with its answer: what follows (drains, exit handlers) is ours
        if grace <= 0:
            os.killpg(0, signal.SIGKILL)
        _thread.interrupt_main()
        time.sleep(grace)
        os._exit(137)

    threading.Thread(target=watch, name="caller-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deployments.warm")
    parser.add_argument("--home", required=True)
    parser.add_argument("--socket", help="a worker's runner: listen here (deployments/worker.py)")
    parser.add_argument("--parent", type=int, help="a worker's runner: exit when this process is gone")
    args = parser.parse_args(argv)
    os.environ["INGEST_HOME"] = args.home
    return serve(Path(args.home), Path(args.socket) if args.socket else None, args.parent)


if __name__ == "__main__":
    sys.exit(main())
