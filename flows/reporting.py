"""What operators see in the Prefect UI: a summary artifact per ingest and progress for long steps.

Artifacts need a flow or task run context; outside one (plain-function tests)
these helpers do nothing rather than fail the ingest over a report.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any, BinaryIO

log = logging.getLogger(__name__)


def _in_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(domain: str, name: str) -> str:
    """Artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{domain}-{name}".lower()).strip("-")[:100]


MAX_REPORTED_EVENTS = 50

# What a group of checksums in a summary is of, in words an operator reads.
CHECKSUM_SUBJECTS = {
    "encrypted": "the upload as received (OpenPGP)",
    "decrypted": "the decrypted content",
    "archived": "the Crypt4GH copy in the vault",
    "upload": "the upload as received",
    "file": "the file",
}
_SIZE_KEY = re.compile(r"(^|_)(size|bytes|total_bytes)$")
_TIME_KEY = re.compile(r"(_at|_time|^time|^date)$")


def human_size(n: int) -> str:
    """``512.0 MiB (536,870,912 bytes)``: the unit for reading, the exact count for checking."""
    value, unit = float(n), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{n:,} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({n:,} bytes)"


def format_time(value: Any) -> str:
    """UTC to the second, as ``2026-11-30 04:41:44 UTC`` (the UI's precision; one zone for every report)."""
    from datetime import datetime, timezone

    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _value(key: str, value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "—"}[value]
    if isinstance(value, int) and _SIZE_KEY.search(key):
        return human_size(value)
    if _TIME_KEY.search(key):
        return format_time(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value) if value else "—"
    return _cell(value)


def checksum_rows(checksums: Any, subject: str = "the file") -> list[tuple[str, str, str]]:
    """(algorithm, value, of what) from ``{alg: value}`` or ``{group: {alg: value}}``."""
    rows: list[tuple[str, str, str]] = []
    if isinstance(checksums, dict):
        for key, value in checksums.items():
            if isinstance(value, dict):
                of = CHECKSUM_SUBJECTS.get(key, key)
                rows += [(alg, str(v), of) for alg, v in value.items() if v]
            elif value:
                rows.append((key, str(value), subject))
    elif isinstance(checksums, list):
        for item in checksums:
            if isinstance(item, dict) and ("type" in item or "algorithm" in item):
                rows.append((str(item.get("type") or item.get("algorithm")), str(item.get("value")),
                             str(item.get("of") or subject)))
    return rows


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_value(c, row.get(c)) if not isinstance(row.get(c), (dict, list)) else
                             _cell(json_text(row.get(c))) for c in columns) + " |" for row in rows]
    return out


def json_text(value: Any) -> str:
    import json

    return json.dumps(value, default=str, sort_keys=True)


def render_report(title: str, status: str, summary: dict[str, Any], *, context: dict[str, Any] | None = None,
                  events: list[dict[str, Any]] = (), timings: dict[str, float] | None = None,
                  images: list[tuple[str, str]] = ()) -> str:
    """The Markdown an operator reads: facts as a table, checksums as a table, lists of records as
    tables, sizes in human units, times in UTC to the second, events in full."""
    lines = [f"# {title}", "", f"**{status}**", ""]
    facts: list[tuple[str, str]] = [(k, _value(k, v)) for k, v in (context or {}).items() if v is not None]
    sections: list[str] = []
    checksums: list[tuple[str, str, str]] = []
    for key, value in summary.items():
        if key == "timings" and timings:
            continue  # shown once, below
        if "checksum" in key and isinstance(value, (dict, list)):
            checksums += checksum_rows(value)
        elif isinstance(value, dict) and value and all(not isinstance(v, (dict, list)) for v in value.values()):
            facts += [(f"{key}: {k}", _value(k, v)) for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            sections += ["", f"## {key.replace('_', ' ').capitalize()}", ""] + _table(value)
        elif isinstance(value, list) and value and all(not isinstance(v, (dict, list)) for v in value):
            facts.append((key, "<br>".join(_cell(v) for v in value)))
        elif isinstance(value, (dict, list)) and value:
            facts.append((key, _cell(json_text(value))))
        else:
            facts.append((key, _value(key, value)))
    if facts:
        lines += ["| | |", "|---|---|"] + [f"| **{_cell(k)}** | {v} |" for k, v in facts]
    for alt, url in images:  # a browser shows http(s) images; a local file can only be linked
        if url.startswith(("http://", "https://")):
            lines += ["", f"![{_cell(alt)}]({url})"]
        lines += ["", f"[{_cell(alt)}]({url})"]
    if checksums:
        lines += ["", "## Checksums", "", "| algorithm | value | of what |", "|---|---|---|"]
        lines += [f"| {a} | `{v}` | {_cell(o)} |" for a, v, o in checksums]
    lines += sections
    if timings:
        lines += ["", "## Timings", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {_cell(k)} | {v:.3f} |" for k, v in timings.items()]
    if events:
        events = list(events)
        lines += ["", "## Events", ""]
        if len(events) > MAX_REPORTED_EVENTS:  # a cube re-checked nightly gathers one event per run
            lines += [f"The latest {MAX_REPORTED_EVENTS} of {len(events)}; the registry holds them all.", ""]
            events = events[-MAX_REPORTED_EVENTS:]
        lines += ["| time | type | subject | outcome | detail |", "|---|---|---|---|---|"]
        for e in events:
            detail = "<br>".join(_cell(d) for d in (e.get("detail"), e.get("outcome_detail")) if d)
            lines.append(f"| {format_time(e.get('occurred_at'))} | {_cell(e.get('event_type'))} | "
                         f"{_cell(e.get('subject'))} | {_cell(e.get('outcome'))} | {detail} |")
    return "\n".join(lines)


def ingest_report(domain: str, name: str, summary: dict[str, Any], *, events: list[dict[str, Any]] = (),
                  files: list[dict[str, Any]] = (), timings: dict[str, float] | None = None,
                  context: dict[str, Any] | None = None, images: list[tuple[str, str]] = (),
                  status: str = "Completed") -> None:
    """The run's report artifact (key ``<domain>-<name>``: the latest report of that object)."""
    if not _in_run():
        return
    from prefect.artifacts import MarkdownArtifact, TableArtifact
    from prefect.context import get_run_context

    from tasks.after_answer import later

    ctx = get_run_context()
    task_run = getattr(ctx, "task_run", None)
    flow_run_id = task_run.flow_run_id if task_run is not None else ctx.flow_run.id  # type: ignore[union-attr]
    owner = {"flow_run_id": flow_run_id, "task_run_id": task_run.id if task_run is not None else None}
    markdown = render_report(f"{domain.upper()} ingest: {name}", status, summary, context=context,
                             events=events, timings=timings, images=images)
    artifacts = [MarkdownArtifact(markdown=markdown, key=artifact_key(domain, name),
                                  description=f"{domain} ingest: {status.lower()}", **owner)]
    if files:
        artifacts.append(TableArtifact(table=[{k: _value(k, v) for k, v in f.items()} for f in files],
                                       key=artifact_key(domain, f"{name}-files"), description="stored files",
                                       **owner))
    later(lambda: _publish(artifacts))  # a CLI call through the warm runner answers first


def _publish(artifacts: list[Any]) -> None:
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # (created for its run, maybe after it ended)
            for artifact in artifacts:
                artifact.create(_sync=True)  # type: ignore[call-arg]
    except Exception as exc:  # a report must never fail an ingest
        log.warning("could not publish the ingest report: %s", exc)


def failure_report(domain: str, name: str, *, reason: str, user_error: bool, step: str | None,
                   cleaned: list[str], next_step: str, context: dict[str, Any] | None = None) -> None:
    """A failed run's report: why (in the submitter's words), whose fault, where, what was undone, what next."""
    summary: dict[str, Any] = {
        "reason": reason,
        "kind": "user error: the input was refused" if user_error else "system error: a fault on our side",
        "failed step": step or "—",
        "cleaned up": cleaned or ["nothing was left to clean"],
        "what to do next": next_step,
    }
    ingest_report(domain, name, summary, context=context,
                  status="Failed (user error)" if user_error else "Failed (system error)")


PROGRESS_MIN_BYTES = 64 << 20  # below this a step takes well under a second: no progress artifact


class Progress:
    """A progress artifact updated at most every ``interval`` seconds, for work large enough to watch.

    The artifact's create and updates are API requests (~10-30 ms each): they go to a thread of their
    own (in the run's context), so the byte pass feeding ``advance`` never waits on them.
    """

    def __init__(self, description: str, total: int, interval: float = 2.0,
                 min_total: int = PROGRESS_MIN_BYTES) -> None:
        self.total = max(total, 1)
        self.interval = interval
        self.done = 0
        self._last = 0.0
        self._id = None
        self._poster: Any = None
        if _in_run() and total >= min_total:
            import contextvars
            from concurrent.futures import ThreadPoolExecutor

            self._context = contextvars.copy_context()
            self._poster = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress-artifact")
            self._last = time.monotonic()
            self._poster.submit(self._context.run, self._create, description)

    def _create(self, description: str) -> None:
        try:
            from prefect.artifacts import create_progress_artifact

            self._id = create_progress_artifact(progress=0.0, description=description)
        except Exception as exc:
            log.warning("no progress artifact: %s", exc)

    def _update(self, value: float) -> None:
        if self._id is None:
            return
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact_id=self._id, progress=value)
        except Exception as exc:
            log.debug("progress update failed: %s", exc)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self._poster is not None and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._poster.submit(self._context.run, self._update, min(100.0, 100.0 * self.done / self.total))

    def finish(self) -> None:
        """The work is done: its last update (100%) follows, after a CLI call's answer where it can."""
        self.advance(self.total - self.done if self.done < self.total else 0)
        if self._poster is not None:
            from tasks.after_answer import later

            poster, self._poster = self._poster, None
            later(lambda: poster.shutdown(wait=True))


class ProgressReader:
    """A read-through wrapper that reports bytes consumed, so any streaming step shows progress."""

    def __init__(self, raw: BinaryIO, progress: Progress) -> None:
        self.raw = raw
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.progress.advance(len(data))
        return data

    def readinto(self, buf) -> int:
        n = self.raw.readinto(buf)
        self.progress.advance(n or 0)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)
