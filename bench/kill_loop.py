"""The kill loop of issue 13: SIGKILL every CLI ingest at every step, recover as a user would, count what is left.

For each domain command as a user runs it (``python flows/run.py ega --message M``, ``apt BAG.tar``,
``fits PATH``, ``nrao --request R``) and for each of its steps (the task names, learned from a traced
clean run), the whole call is SIGKILLed: at the step's start by a failpoint (tasks/failpoints.py,
deterministic), and for byte-heavy steps also halfway through the step, from outside (the caller's
process group and the warm runner's fork that serves it, whose pid the trace names). Recovery is
what a CLI user does without thinking: run the same command again. Only if that leaves something
wrong is ``reconcile`` run too, and the table says so. After each case it counts, for that object
alone: stored copies, terminal answers, and leftovers (staging, ``.part``, ``.vault-tmp-*``, APT
interim data, NGAS temporaries, registry rows still in progress).

    python bench/kill_loop.py [--domains ega,apt,fits,nrao] [--size-mib 32] [--quick] [--keep]

``--quick`` is one kill per domain at its most dangerous step (tests/integration/test_kill_loop.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project's packages
RUN = [sys.executable, str(ROOT / "flows" / "run.py")]
CALL_TIMEOUT = 600.0


# ------------------------------------------------------------------ running the CLI as a user does

@dataclass
class Call:
    code: int | None            # None: killed by us
    seconds: float
    stdout: str
    stderr: str
    landed: str | None = None   # where a mid-step kill landed


def _env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_FAILPOINT")}
    env.update({"INGEST_HOME": str(home), "INGEST_RETRY_BASE_SECONDS": "0.2",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    env.update(extra or {})
    return env


def run_cli(home: Path, argv: list[str], *, extra_env: dict[str, str] | None = None,
            kill_at: tuple[str, float, Callable[[], int] | None, int] | None = None,
            trace: Path | None = None) -> Call:
    """One ``python flows/run.py …`` in a session of its own; ``kill_at=(step, seconds)`` SIGKILLs the
    caller's process group and the process running the step (the warm runner's fork) that many seconds
    after the step started (the trace file says when and where)."""
    env = _env(home, extra_env)
    if trace is not None:
        env["INGEST_FAILPOINT_TRACE"] = str(trace)
    began = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(RUN + argv, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        landed = None
        try:
            if kill_at is not None:
                landed = _kill_mid_step(proc, trace, *kill_at)
            proc.wait(timeout=CALL_TIMEOUT)
        finally:
            if proc.poll() is None:
                _killpg(proc.pid)
                proc.wait()
        out.seek(0)
        err.seek(0)
        return Call(None if landed else proc.returncode, time.monotonic() - began,
                    out.read().decode(errors="replace"), err.read().decode(errors="replace"), landed)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def traced(trace: Path | None) -> list[tuple[int, str, float]]:
    if trace is None or not trace.exists():
        return []
    rows = []
    for line in trace.read_text().splitlines():
        pid, step, at = line.split()
        rows.append((int(pid), step, float(at)))
    return rows


def _kill_mid_step(proc: subprocess.Popen, trace: Path | None, step: str, seconds: float,
                   in_flight: Callable[[], int] | None = None, threshold: int = 0) -> str | None:
    """Wait for ``step`` to start, then SIGKILL the call (its process group and the fork running the step)
    once ``in_flight()`` has grown by ``threshold`` bytes of temporaries (a write caught midway), or ``seconds``
    into the step when none show up by then (a step that only reads); returns which, or None (not killed)."""
    while proc.poll() is None:
        hit = [(pid, at) for pid, name, at in traced(trace) if name == step]
        if hit:
            pid, at = hit[0]
            already = in_flight() if in_flight is not None else 0  # what earlier steps staged: not this step's
            while in_flight is not None and time.time() < at + seconds and proc.poll() is None:
                held = in_flight() - already
                if held >= threshold:
                    _kill(pid)
                    _killpg(proc.pid)
                    return f"middle {held / 2**20:.0f} MiB"
                time.sleep(0.002)
            time.sleep(max(0.0, at + seconds - time.time()))
            _kill(pid)
            _killpg(proc.pid)
            return "middle (timed)"
        time.sleep(0.005)
    return None


def in_flight_bytes(home: Path) -> int:
    """Bytes in temporaries right now: staging, ``.part`` and ``.vault-tmp-*`` files, NGAS uploads."""
    held = 0
    for top in ("staging", "vault", "ngas"):
        for root, _, names in os.walk(home / top):  # a directory removed meanwhile is skipped, not an error
            for name in names:
                if top == "staging" or name.endswith(".part") or name.startswith(".vault-tmp"):
                    try:
                        held += os.stat(os.path.join(root, name)).st_size
                    except OSError:
                        pass
    return held


def last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


# ------------------------------------------------------------------ what a case leaves: shared probes

def outbox(home: Path) -> list[dict[str, Any]]:
    path = home / "outbox" / "notifications.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def files_under(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file()) if root.exists() else []


def vault_temporaries(home: Path) -> list[str]:
    return [str(p) for p in files_under(home / "vault", ".vault-tmp-*")]


def sql(home: Path, query: str, params: tuple = ()) -> list[dict[str, Any]]:
    from blocks.register import load_block
    from blocks.registry import RegistryBlock

    with load_block(RegistryBlock, "default").open() as registry:
        return [dict(r) for r in registry.execute(query, params)]


# ------------------------------------------------------------------ the four domains

@dataclass
class Case:
    argv: list[str]
    ident: dict[str, Any]


@dataclass
class Domain:
    name: str
    build: Callable[[Path, str, int], Case]          # (home, case id, bytes) → the command and what to look for
    check: Callable[[Path, Case, list[str]], tuple[int, int, list[str]]]  # → (copies, expected, leftovers)
    heavy: tuple[str, ...]                           # steps that move the bytes: killed midway too
    dangerous: tuple[str, str]                       # the quick test's one kill: (step, "start" | "middle")
    steps: list[str] = field(default_factory=list)
    durations: dict[str, float] = field(default_factory=dict)
    resumed: dict[str, str | None] = field(default_factory=dict)  # step only a later run takes → the kill before


def _gpg_encrypt(plain: Path, out: Path, public_key: Path) -> None:
    from flows.ega.demo import encrypt_for_archive

    encrypt_for_archive(plain, out, public_key)


def build_ega(home: Path, case: str, size: int) -> Case:
    from flows.nrao.samples import make_sample_file

    user = "kill-loop"
    inbox = home / "inbox" / user
    inbox.mkdir(parents=True, exist_ok=True)
    plain = make_sample_file(Path(tempfile.mkdtemp(dir=home)) / f"{case}.bin", size)
    encrypted = inbox / f"{case}.bin.gpg"
    _gpg_encrypt(plain, encrypted, home / "keys" / "ega.pub.asc")
    sha256 = _digest(plain, "sha256")
    plain.unlink()
    plain.parent.rmdir()
    stable_id = "EGAF" + str(int(hashlib.sha256(case.encode()).hexdigest(), 16))[:11].zfill(11)
    message = {"user": user, "filepath": encrypted.name, "stable_id": stable_id,
               "encrypted_integrity": {"checksum": _digest(encrypted, "md5"), "algorithm": "md5"},
               "unencrypted_integrity": {"checksum": sha256, "algorithm": "sha256"}}
    path = home / "messages" / f"{case}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(message))
    return Case(["ega", "--message", str(path)], {"stable_id": stable_id, "filepath": encrypted.name, "user": user})


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_apt(home: Path, case: str, size: int) -> Case:
    from flows.apt.samples import build_bag

    work = home / "bags"
    payload = {"data/readme.txt": f"kill loop case {case}\n".encode(),
               "data/big.bin": os.urandom(size // 2), "data/more/other.bin": os.urandom(size - size // 2)}
    name = f"test.edu.kl_{case.replace('-', '_')}"
    tar = build_bag(work, name, payload, title=f"Kill loop {case}")
    return Case(["apt", str(tar), "--institution", "test.edu"], {"bag": name, "tar": tar.name})


def build_fits(home: Path, case: str, size: int) -> Case:
    from flows.fits.samples import SampleCube, write_sample_cube

    n = int(hashlib.sha256(case.encode()).hexdigest(), 16)
    side = max(48, int((size / (5 * 4 * 5 * 4)) ** 0.5))
    spec = SampleCube(date_beg=f"20{10 + n % 10}-0{1 + n % 9}-1{n % 10}T{n % 24:02d}:{n % 60:02d}:{(n // 60) % 60:02d}.5",
                      nx=side, ny=side)
    cube = write_sample_cube(home / "science" / "kill-loop" / case / "CRISP", spec)
    relative = cube.relative_to(home / "science").as_posix()
    return Case(["fits", relative], {"path": relative})


def build_nrao(home: Path, case: str, size: int) -> Case:
    from flows.nrao.samples import make_observation

    root = home / "science" / "nrao"
    n = int(hashlib.sha256(case.encode()).hexdigest(), 16) % 10**8
    sdm = f"TSKY0001.sb{n:08d}.eb{n + 1:08d}.59400.5"
    make_observation(root, sdm, bdf_count=4, bdf_size=max(40_000, size // 4))
    request = {"kind": "observation", "source": sdm, "correlation_id": f"kill-loop-{case}"}
    path = home / "requests" / f"{case}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(request))
    return Case(["nrao", "--request", str(path)], {"source": sdm})


def build_nrao_unique(home: Path, case: str, size: int) -> Case:
    """An SDM whose BDF names are its own: NGAS file ids of one case never collide with another's."""
    case_obj = build_nrao(home, case, size)
    binary = home / "science" / "nrao" / case_obj.ident["source"] / "ASDMBinary"
    tag = hashlib.sha256(case.encode()).hexdigest()[:10]
    for bdf in sorted(binary.iterdir()):
        bdf.rename(binary / f"uid____evla_bdf_{tag}{bdf.name[-2:]}")
    return case_obj


# ------------------------------------------------------------------ per-domain accounting

SKIP_DIRS = ("pg", "prefect", "outbox", "inbox", "bags", "science", "messages", "requests", "keys", "traces")


def snapshot(home: Path) -> dict[str, tuple[int, float]]:
    """Every file the system itself writes (not inputs, not the shared services' own state)."""
    seen = {}
    for top in home.iterdir():
        if top.name in SKIP_DIRS:
            continue
        for path in ([top] if top.is_file() else top.rglob("*")):
            if path.is_file():
                st = path.stat()
                seen[str(path.relative_to(home))] = (st.st_size, st.st_mtime)
    if S3:
        seen.update(s3_snapshot())
    return seen


S3: dict[str, str] = {}  # with --s3: {"bucket", "endpoint"}, the EGA vault is that bucket (APT targets stay directories)


def s3_snapshot() -> dict[str, tuple[int, float]]:
    """The bucket's objects as ``vault/<key>`` (so the domain checks read them as vault files) and its
    incomplete multipart uploads as ``s3-multipart/<key>``: what a put killed midway leaves on S3."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=S3["endpoint"])
    seen: dict[str, tuple[int, float]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=S3["bucket"]):
        for obj in page.get("Contents", []):
            seen[f"vault/{obj['Key']}"] = (obj["Size"], obj["LastModified"].timestamp())
    for upload in s3.list_multipart_uploads(Bucket=S3["bucket"]).get("Uploads", []):
        seen[f"s3-multipart/{upload['Key']}#{upload['UploadId'][:8]}"] = (0, upload["Initiated"].timestamp())
    return seen


def new_files(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(p for p, v in after.items() if before.get(p) != v and not p.endswith(".lock"))


SUCCESS = {"ega": ("files.completed",), "apt": ("apt.ingest.success",),
           "fits": ("fits.ingest.ingested", "fits.ingest.skipped"), "nrao": ("nrao.ingest.completed",)}
TERMINAL = {"ega": lambda rk: rk in ("files.completed", "files.error"),
            "apt": lambda rk: rk.startswith("apt.ingest."),
            "fits": lambda rk: rk.startswith("fits.ingest."),
            "nrao": lambda rk: rk.startswith("nrao.ingest.")}


def _in_progress(home: Path, domain: str, like: str) -> list[str]:
    rows = sql(home, "SELECT id, natural_key, state, review_reason FROM ingests WHERE domain = %s AND natural_key LIKE %s",
               (domain, like))
    out = [f"ingest {r['id']} {r['state']}" for r in rows if r["state"] not in ("completed", "skipped")]
    out += [f"ingest {r['id']} marked for review: {r['review_reason']}" for r in rows if r["review_reason"]]
    return out + ([] if rows else ["no ingests row"])


def check_ega(home: Path, case: Case, new: list[str]) -> tuple[int, int, list[str]]:
    sid = case.ident["stable_id"]
    copies = [p for p in new if p.startswith(f"vault/ega/{sid}/") and not Path(p).name.startswith(".vault-tmp")]
    left = [p for p in new if p not in copies]
    left += _in_progress(home, "ega", f"{sid}|%")
    return len(copies), 1, left


def check_apt(home: Path, case: Case, new: list[str]) -> tuple[int, int, list[str]]:
    obj = f"test.edu/{case.ident['bag']}"
    copies = [p for p in new if p.startswith("vault/apt-") and not Path(p).name.startswith(".vault-tmp")]
    left = [p for p in new if p not in copies]
    items = sql(home, "SELECT id, status, stage FROM apt_work_items WHERE object_identifier = %s OR bag_name = %s",
                (obj, case.ident["bag"]))
    left += [f"work item {r['id']} {r['status']} at {r['stage']}" for r in items if r["status"] != "Success"]
    for r in items:
        interim = sql(home, "SELECT count(*) AS n FROM apt_ingest_files WHERE work_item_id = %s", (r["id"],))[0]["n"]
        if interim:
            left.append(f"work item {r['id']}: {interim} interim file rows")
    missing = sql(home, "SELECT count(*) AS n FROM apt_files f JOIN apt_objects o ON o.id = f.object_id "
                        "WHERE o.identifier = %s AND f.missing_since_work_item IS NOT NULL", (obj,))[0]["n"]
    if missing:
        left.append(f"{missing} files marked missing")
    expected = sql(home, "SELECT count(*) AS n FROM apt_storage_records s JOIN apt_files f ON f.id = s.file_id "
                         "JOIN apt_objects o ON o.id = f.object_id WHERE o.identifier = %s", (obj,))[0]["n"]
    left += _in_progress(home, "apt", f"{obj}#%")
    return len(copies), expected or -1, left


def check_fits(home: Path, case: Case, new: list[str]) -> tuple[int, int, list[str]]:
    path = case.ident["path"]
    cubes = sql(home, "SELECT id, oid FROM fits_cubes WHERE path = %s", (path,))
    stem = Path(path).with_suffix("").as_posix()
    expected_previews = {f"previews/{stem}.jpg", f"previews/{stem}.thumb.png"}
    left = [p for p in new if p not in expected_previews]
    orders = sql(home, "SELECT id, state FROM fits_work_orders WHERE path = %s", (path,))
    left += [f"work order {r['id']} {r['state']}" for r in orders if r["state"] != "Completed"]
    for cube in cubes:
        left += _in_progress(home, "fits", cube["oid"])
    return len(cubes), 1, left


def check_nrao(home: Path, case: Case, new: list[str]) -> tuple[int, int, list[str]]:
    group = f"observation:{case.ident['source']}"
    stored = [p for p in new if p.startswith("ngas/") and not p.endswith(".json") and "/.tmp/" not in p]
    recorded = {f"ngas/{r['ngas_file_id']}/{r['file_version']}" for r in
                sql(home, "SELECT ngas_file_id, file_version FROM nrao_product_files WHERE product_group = %s", (group,))}
    left = [p for p in new if not p.startswith("ngas/") or "/.tmp/" in p]
    left += [f"NGAS {p} recorded nowhere" for p in stored if p not in recorded]
    left += [f"{p} recorded, not in NGAS" for p in recorded if p not in stored]
    products = sql(home, "SELECT count(*) AS n FROM nrao_products WHERE product_group = %s", (group,))[0]["n"]
    if products != 1:
        left.append(f"{products} products recorded")
    for table in ("nrao_attempt_locators", "nrao_attempt_files", "nrao_attempt_stagings"):
        n = sql(home, f"SELECT count(*) AS n FROM {table} WHERE product_group = %s", (group,))[0]["n"]
        if n:
            left.append(f"{n} rows in {table}")
    left += _in_progress(home, "nrao", group)
    return len([p for p in stored if p in recorded]), len(recorded) or -1, left


DOMAINS = {
    "ega": Domain("ega", build_ega, check_ega, ("decrypt-reencrypt-stage", "archive-to-vault"),
                  ("record-in-registry", "start")),  # in the vault, not yet recorded: the resume path
    "apt": Domain("apt", build_apt, check_apt, ("receive-scan-bag", "copy-to-staging", "format-identification",
                                                "store-preservation-copies", "storage-validation"),
                  ("finish-work-item", "start")),  # after cleanup removed the tar and the interim rows
    "fits": Domain("fits", build_fits, check_fits, ("verify-checksums", "describe-cube", "make-previews"),
                   ("make-previews", "start")),  # the cube row is written, its previews not yet
    "nrao": Domain("nrao", build_nrao_unique, check_nrao, ("stage-products", "archive-to-ngas"),
                  ("record-in-registry", "start")),  # every file in NGAS, none recorded
}


# ------------------------------------------------------------------ one case

@dataclass
class Result:
    domain: str
    step: str
    point: str
    recovered_by: str
    copies: str
    answers: int
    leftovers: list[str]
    seconds: float
    detail: str = ""
    cleaned: str = "-"  # files the kill left that recovery removed (count, size)

    @property
    def ok(self) -> bool:
        return self.recovered_by != "not recovered" and not self.leftovers and self.answers == 1 \
            and self.copies.split("/")[0] == self.copies.split("/")[1]


def measure(home: Path, domain: Domain, case: Case, before: dict[str, Any], outbox_before: int) -> tuple[str, int, list[str]]:
    new = new_files(before, snapshot(home))
    copies, expected, left = domain.check(home, case, new)
    answers = [m.get("routing_key", "") for m in outbox(home)[outbox_before:]]
    answers = [key for key in answers if TERMINAL[domain.name](key)]
    left += [f"answer {key} (not a success)" for key in answers if key not in SUCCESS[domain.name]]
    return f"{copies}/{expected}", len(answers), left


def run_case(home: Path, domain: Domain, step: str | None, point: str, size: int, seq: int, delay: float = 0.0,
             then: str | None = None) -> Result:
    """One kill and its recovery. ``then``: a step only a later run takes (EGA's verify-vault-copy after a
    kill, FITS's finish-unchanged after a completed run), killed at its start in the next run of the same
    command, which follows a kill at ``step`` or (``step`` None) a clean run; then the user's ladder."""
    case_id = f"{domain.name}-{seq:02d}-{point}-{step}"[:60]
    case = domain.build(home, case_id, size)
    before, outbox_before = snapshot(home), len(outbox(home))
    trace = home / "traces" / f"{case_id}.trace"
    trace.parent.mkdir(exist_ok=True)
    began = time.monotonic()
    if step is None:  # a clean, complete run first: the next run takes the "already done" path
        killed = run_cli(home, case.argv, trace=trace)
        step = "(completed run)"
        if killed.code != 0:
            return Result(domain.name, step, point, "not killed", "-", 0, [], time.monotonic() - began,
                          f"the clean run failed: exit {killed.code}")
        killed.code = None
        outbox_before = len(outbox(home))  # its answer was the clean run's; count the later runs' only
    elif point == "start":
        killed = run_cli(home, case.argv, extra_env={"INGEST_FAILPOINT": f"{step}:kill"}, trace=trace)
    else:
        killed = run_cli(home, case.argv, kill_at=(step, delay, lambda: in_flight_bytes(home), min(size // 4, 2 << 20)),
                         trace=trace)
        point = _where_it_landed(trace, step, killed.landed or point)
    reached = step == "(completed run)" or any(name == step for _, name, _ in traced(trace))
    after_kill = snapshot(home)
    left_by_kill = {p: after_kill[p][0] for p in new_files(before, after_kill)}
    if not reached or killed.code == 0:
        return Result(domain.name, step, point, "not killed", "-", 0, [],
                      time.monotonic() - began, f"step reached: {reached}, exit {killed.code}")
    if then is not None:
        second = run_cli(home, case.argv, extra_env={"INGEST_FAILPOINT": f"{then}:kill"}, trace=trace)
        if second.code == 0 or then not in [name for _, name, _ in traced(trace)]:
            return Result(domain.name, f"{step} then {then}", point, "not killed", "-", 0, [],
                          time.monotonic() - began, f"second kill missed: exit {second.code}")
        step, point = f"{then} (run after {step})", "start"
    rerun_trace = home / "traces" / f"{case_id}.rerun.trace"
    ladder = [("re-run", lambda: run_cli(home, case.argv, trace=rerun_trace)),
              ("reconcile", lambda: run_cli(home, ["reconcile", "--stuck-after-minutes", "0",
                                                   "--temporaries-after-minutes", "0"])),
              ("re-run", lambda: run_cli(home, case.argv))]
    done: list[str] = []
    detail = ""
    rerun_code = None
    for name, action in ladder:
        call = action()
        done.append(name)
        if name == "re-run":
            rerun_code = call.code
            if call.code != 0:
                detail = f"{name} exit {call.code}: {(last_json(call.stdout).get('error') or call.stderr.strip()[-200:])}"
        copies, answers, left = measure(home, domain, case, before, outbox_before)
        result = Result(domain.name, step, point, " + ".join(done), copies, answers, left,
                        time.monotonic() - began, detail)
        if result.ok and call.code == 0 and rerun_code == 0:
            break
    else:
        result.recovered_by = "not recovered"
    remaining = snapshot(home)
    gone = [p for p in left_by_kill if p not in remaining]
    result.cleaned = f"{len(gone)} ({sum(left_by_kill[p] for p in gone) / 2**20:.1f} MiB)" if gone else "0"
    for _, name, _ in traced(rerun_trace) if then is None and point == "start" else ():
        if name not in domain.steps and name not in domain.resumed:
            domain.resumed[name] = step  # a step only a resumed run takes, first seen after this kill
    return result


def _where_it_landed(trace: Path, step: str, point: str) -> str:
    names = [name for _, name, _ in traced(trace)]
    if step in names and names.index(step) < len(names) - 1:
        return f"after ({names[-1]})"  # the step ended before the kill: it landed in a later one
    return point


# ------------------------------------------------------------------ the loop

def learn_steps(home: Path, domain: Domain, size: int) -> None:
    """One clean, traced run: the flow's steps in order and how long each took."""
    case = domain.build(home, f"{domain.name}-baseline", size)
    trace = home / "traces" / f"{domain.name}-baseline.trace"
    trace.parent.mkdir(exist_ok=True)
    call = run_cli(home, case.argv, trace=trace)
    if call.code != 0:
        raise SystemExit(f"{domain.name}: the clean run failed ({call.code}): {call.stdout[-500:]} {call.stderr[-2000:]}")
    rows = traced(trace)
    for i, (_, step, at) in enumerate(rows):
        if step not in domain.steps:
            domain.steps.append(step)
            domain.durations[step] = (rows[i + 1][2] if i + 1 < len(rows) else at + 0.2) - at
    again = home / "traces" / f"{domain.name}-baseline-again.trace"
    if run_cli(home, case.argv, trace=again).code == 0:  # the same command again: the "already done" path
        for _, step, _ in traced(again):
            if step not in domain.steps:
                domain.resumed.setdefault(step, None)


def plan(domain: Domain, quick: bool) -> list[tuple[str, str, float]]:
    """(step, "start" | "middle", seconds into the step) for every case of the domain."""
    if quick:  # deterministic failpoint kills; no clean run first
        step, point = domain.dangerous
        return [(step, point, 0.0)]
    cases = [(step, "start", 0.0) for step in domain.steps]
    cases += [(step, "middle", 0.6 * domain.durations[step]) for step in domain.steps if step in domain.heavy]
    return cases


def table(results: list[Result]) -> str:
    head = ("domain", "step", "kill point", "recovered by", "kill left, cleaned", "copies", "answers", "leftovers", "s",
            "verdict")
    rows = [(r.domain, r.step, r.point, r.recovered_by, r.cleaned, r.copies, str(r.answers),
             str(len(r.leftovers)) if r.leftovers else "0", f"{r.seconds:.1f}", "ok" if r.ok else "FAIL")
            for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    out = [line(head), line(["-" * w for w in widths]), *map(line, rows)]
    ok = sum(r.ok for r in results)
    by = {}
    for r in results:
        by[r.recovered_by] = by.get(r.recovered_by, 0) + 1
    out.append(f"totals: {len(results)} kills, {ok} ok, {len(results) - ok} failed; recovered by: "
               + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    for r in results:
        if not r.ok or r.detail:
            out.append(f"  {r.domain} {r.step} {r.point}: {r.detail} leftovers={r.leftovers[:6]}")
    return "\n".join(out)


def _progress(result: Result) -> None:
    print(f"{result.domain:5} {result.step:28} {result.point:18} {result.recovered_by:30} "
          f"cleaned {result.cleaned:14} copies {result.copies:6} answers {result.answers} leftovers {len(result.leftovers)} "
          f"{result.seconds:5.1f} s {'ok' if result.ok else 'FAIL ' + str(result.leftovers[:4])} "
          f"{result.detail}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import atexit
    import shutil

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", default="ega,apt,fits,nrao")
    parser.add_argument("--size-mib", type=float, default=32, help="input size for the kills in the middle of a step")
    parser.add_argument("--small-kib", type=float, default=256, help="input size for the kills at a step's start")
    parser.add_argument("--quick", action="store_true", help="one kill per domain, at its most dangerous step")
    parser.add_argument("--steps", help="only these steps (comma-separated)")
    parser.add_argument("--points", default="start,middle", help="kill points: start, middle or both")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line too")
    parser.add_argument("--s3", action="store_true", help="EGA's vault in an S3 bucket at --s3-endpoint")
    parser.add_argument("--s3-endpoint", default=os.environ.get("INGEST_TEST_S3_ENDPOINT"),
                        help="S3 endpoint (default $INGEST_TEST_S3_ENDPOINT, e.g. a moto server)")
    parser.add_argument("--keep", action="store_true", help="keep the home (printed) for inspection")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="kill-loop-"))
    home = work / "home"
    if not args.keep:
        atexit.register(shutil.rmtree, work, True)  # registered first, runs last: after PostgreSQL stops
    os.environ["INGEST_HOME"] = str(home)
    for name in [k for k in os.environ if k.startswith("PREFECT_API")]:
        del os.environ[name]
    big, small = int(args.size_mib * (1 << 20)), int(args.small_kib * 1024)
    results: list[Result] = []
    try:
        init_argv = ["init"]
        if args.s3:
            if not args.s3_endpoint:
                raise SystemExit("--s3 needs --s3-endpoint or INGEST_TEST_S3_ENDPOINT")
            S3.update(bucket=f"kill-loop-{os.urandom(4).hex()}", endpoint=args.s3_endpoint)
            init_argv += ["--s3-bucket", S3["bucket"], "--s3-endpoint", S3["endpoint"]]
        init = run_cli(home, init_argv)
        if init.code != 0:
            raise SystemExit(f"init failed: {init.stderr[-2000:]}")
        os.environ["PREFECT_API_URL"] = json.loads((home / "prefect" / "api.json").read_text())["url"]
        seq = 0
        for name in args.domains.split(","):
            domain = DOMAINS[name]
            if not args.quick:
                learn_steps(home, domain, big)  # the steps, and how long the heavy ones take
            for step, point, delay in plan(domain, args.quick):
                if (args.steps and step not in args.steps.split(",")) or point not in args.points.split(","):
                    continue
                seq += 1
                result = run_case(home, domain, step, point, big if point == "middle" else small, seq, delay)
                results.append(result)
                _progress(result)
            if not args.quick and not args.steps and "start" in args.points:
                for then, first in list(domain.resumed.items()):
                    seq += 1
                    results.append(run_case(home, domain, first, "start", small, seq, then=then))
                    _progress(results[-1])
        print()
        print(table(results))
        if args.json:
            print(json.dumps({"results": [{**r.__dict__, "ok": r.ok} for r in results]}))
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        run_cli(home, ["server", "stop"])
        if args.keep:
            print(f"home kept: {home}")
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
