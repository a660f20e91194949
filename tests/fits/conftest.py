"""Fixtures for the FITS tests: synthetic SST cubes, a fake SVO per test and a client bound to it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cubes import CubeSpec, write_cube  # noqa: E402
from fake_svo import DEFAULT_KEY, DEFAULT_USER, FakeSvo  # noqa: E402

from flows.fits.svo import SvoClient  # noqa: E402

SVO_USER, SVO_KEY = DEFAULT_USER, DEFAULT_KEY


@pytest.fixture
def cube(tmp_path: Path) -> Path:
    """A small CRISP cube with every extension, its name carrying the scan list."""
    return write_cube(tmp_path, CubeSpec())


@pytest.fixture
def fake_svo():
    with FakeSvo(users={SVO_USER: SVO_KEY}) as server:
        yield server


@pytest.fixture
def svo(fake_svo: FakeSvo):
    """A client with millisecond backoff so retry tests stay fast."""
    with SvoClient(fake_svo.api_url, SVO_USER, SVO_KEY, backoff_base=0.005, retries=3, timeout=10) as client:
        yield client
