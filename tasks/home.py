"""INGEST_HOME: the one directory holding every embedded default.

Two homes never share state: pointing ``INGEST_HOME`` elsewhere moves the inbox,
staging, vault, outbox, keys, the embedded PostgreSQL and (unless the user chose
their own) Prefect's home with it.
"""
from __future__ import annotations

import os
from pathlib import Path

SUBDIRS = ("inbox", "staging", "vault", "outbox", "keys", "pg", "science", "receiving")


def ingest_home() -> Path:
    return Path(os.environ.get("INGEST_HOME") or "./var").resolve()


def home_path(name: str) -> Path:
    """A well-known subdirectory of the home (created on demand)."""
    path = ingest_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def apply_home_env() -> None:
    """Point Prefect at ``$INGEST_HOME/prefect`` unless the user already chose.

    Must run before ``import prefect`` because Prefect reads its settings once.
    """
    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        prefect_home = ingest_home() / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(prefect_home)
    # No network here, and analytics would only add latency to every start.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
