"""A SIGKILLed worker command leaves its runner's private socket directory; the next one sweeps it."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from deployments.worker import DIR_PREFIX, ORPHAN_SECONDS, sweep_stale_dirs


def test_stale_socket_directories_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    stale = tmp_path / f"{DIR_PREFIX}stale"  # its runner was killed too: a lock nobody holds
    stale.mkdir()
    (stale / "runner.lock").touch()
    (stale / "runner.sock").touch()
    live = tmp_path / f"{DIR_PREFIX}live"
    live.mkdir()
    held = open(live / "runner.lock", "a")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a running runner holds its lock for life
    empty_old = tmp_path / f"{DIR_PREFIX}emptyold"
    empty_old.mkdir()
    old = time.time() - ORPHAN_SECONDS - 5
    os.utime(empty_old, (old, old))
    starting = tmp_path / f"{DIR_PREFIX}starting"  # just made by a worker whose runner is not up yet
    starting.mkdir()
    other = tmp_path / "not-ours"
    other.mkdir()
    try:
        assert sorted(p.name for p in sweep_stale_dirs(tmp_path)) == sorted([stale.name, empty_old.name])
        assert live.exists() and starting.exists() and other.exists()
        assert not stale.exists() and not empty_old.exists()
    finally:
        held.close()
