"""Demo input for the APT flow: a small valid APTrust bag, ingested with the embedded defaults
(receiving under $INGEST_HOME/receiving, copies under $INGEST_HOME/vault/apt-<target>/)."""
from __future__ import annotations

from typing import Any

from tasks.home import home_path


def run_demo() -> dict[str, Any]:
    from flows.apt.cli import run_bag
    from flows.apt.samples import build_bag

    tar = build_bag(home_path("samples"), "demo.edu.sample_bag", title="Demo bag", access="Institution",
                    storage_option="Standard")
    code, summary = run_bag(tar, institution="demo.edu")
    if code:
        raise RuntimeError(f"APT demo ingest failed: {summary.get('errors') or summary.get('error')}")
    summary["copies_under"] = str(home_path("vault"))
    return summary
