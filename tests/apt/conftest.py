"""The APT bag corpus, built once per session (a few hundred KB, well under a second)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus import Case, build_corpus  # noqa: E402


@pytest.fixture(scope="session")
def apt_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return build_corpus(tmp_path_factory.mktemp("apt-corpus"))
