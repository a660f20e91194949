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


def ingest_report(domain: str, name: str, summary: dict[str, Any], *, events: list[dict[str, Any]] = (),
                  files: list[dict[str, Any]] = (), timings: dict[str, float] | None = None) -> None:
    if not _in_run():
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    lines = [f"# {domain.upper()} ingest: {name}", ""]
    for key, value in summary.items():
        if isinstance(value, dict):
            lines.append(f"- **{key}**:")
            for k, v in value.items():
                lines.append(f"  - {k}: `{v}`")
        else:
            lines.append(f"- **{key}**: `{value}`")
    if timings:
        lines += ["", "| step | seconds |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in timings.items()]
    if events:
        events = list(events)
        lines += ["", "## Events", ""]
        if len(events) > MAX_REPORTED_EVENTS:  # a cube re-checked nightly gathers one event per run
            lines += [f"The latest {MAX_REPORTED_EVENTS} of {len(events)}; the registry holds them all.", ""]
            events = events[-MAX_REPORTED_EVENTS:]
        lines += ["| time | type | subject | outcome | detail |", "|---|---|---|---|---|"]
        for e in events:
            detail = str(e.get("detail") or "").replace("|", "\\|")
            lines.append(f"| {e.get('occurred_at')} | {e.get('event_type')} | {e.get('subject')} | "
                         f"{e.get('outcome')} | {detail} |")
    try:
        create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(domain, name),
                                 description=f"{domain} ingest summary")
        if files:
            create_table_artifact(table=[{k: str(v) for k, v in f.items()} for f in files],
                                  key=artifact_key(domain, f"{name}-files"), description="stored files")
    except Exception as exc:  # a report must never fail an ingest
        log.warning("could not publish the ingest report: %s", exc)


PROGRESS_MIN_BYTES = 64 << 20  # below this a step takes well under a second: no progress artifact


class Progress:
    """A progress artifact updated at most every ``interval`` seconds, for work large enough to watch."""

    def __init__(self, description: str, total: int, interval: float = 2.0,
                 min_total: int = PROGRESS_MIN_BYTES) -> None:
        self.total = max(total, 1)
        self.interval = interval
        self.done = 0
        self._last = 0.0
        self._id = None
        if _in_run() and total >= min_total:
            try:
                from prefect.artifacts import create_progress_artifact

                self._id = create_progress_artifact(progress=0.0, description=description)
            except Exception as exc:
                log.warning("no progress artifact: %s", exc)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self._id is not None and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(artifact_id=self._id, progress=min(100.0, 100.0 * self.done / self.total))
            except Exception as exc:
                log.debug("progress update failed: %s", exc)

    def finish(self) -> None:
        self.advance(self.total - self.done if self.done < self.total else 0)


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
