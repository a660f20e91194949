"""Fixtures for the NRAO tests: a fake NGAS per test, a client bound to it, synthetic runs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_ngas import FakeNgas  # noqa: E402

from flows.nrao.ngas import NgasClient  # noqa: E402


@pytest.fixture
def fake_ngas(tmp_path: Path):
    with FakeNgas(tmp_path / "ngas") as server:
        yield server


@pytest.fixture
def ngas(fake_ngas: FakeNgas):
    """A client with fast backoff so retry tests take milliseconds."""
    with NgasClient(fake_ngas.url, backoff=0.01, retries=4, timeout=30) as client:
        yield client


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(source root, staging root)."""
    src, staging = tmp_path / "runs", tmp_path / "staging"
    src.mkdir()
    staging.mkdir()
    return src, staging
