"""The APT bag corpus (built once per session, a few hundred KB, well under a second) and a
per-test APT configuration: block documents pointing at the real PostgreSQL and at
directories (or moto S3 buckets) under the test's INGEST_HOME."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from corpus import Case, build_corpus  # noqa: E402


@pytest.fixture(scope="session")
def apt_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return build_corpus(tmp_path_factory.mktemp("apt-corpus"))


@dataclass
class AptEnv:
    name: str
    home: Path
    pg_dsn: str
    unique: str

    @property
    def institution(self) -> str:
        """A per-test institution, so objects of other tests never look like earlier versions."""
        return f"{self.unique}.edu"

    @property
    def receiving(self) -> Path:
        return self.home / "receiving"

    @property
    def staging(self) -> Path:
        return self.home / "staging" / "apt"

    def target_dir(self, target: str) -> Path:
        return self.home / "vault" / f"apt-{target}"

    def target_files(self, target: str) -> list[Path]:
        d = self.target_dir(target)
        return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []

    def staging_files(self) -> list[Path]:
        return sorted(p for p in self.staging.rglob("*") if p.is_file()) if self.staging.exists() else []

    def save(self, suffix: str = "", **apt_fields: Any) -> str:
        """Save the APT and registry documents (under name + suffix); returns the name."""
        from pydantic import SecretStr

        from blocks.apt import AptBlock
        from blocks.broker import BrokerBlock
        from blocks.registry import RegistryBlock

        name = self.name + suffix
        AptBlock(**apt_fields).save(name, overwrite=True)
        RegistryBlock(dsn=SecretStr(self.pg_dsn)).save(name, overwrite=True)
        BrokerBlock().save(name, overwrite=True)  # no broker: status messages go to the outbox
        return name

    def run(self, tar: Path, institution: str | None = None, config: str | None = None,
            via_scan: bool = False) -> tuple[int, dict[str, Any]]:
        from flows.apt.cli import run_bag

        return run_bag(tar, institution=institution or self.institution, config_block=config or self.name,
                       via_scan=via_scan)

    def registry(self):
        from tasks.registry import Registry

        return Registry(self.pg_dsn)

    def config(self, name: str | None = None):
        from flows.apt.config import load_config

        return load_config(name or self.name)


@pytest.fixture
def apt_env(prefect_api, pg_dsn: str, unique: str, ingest_home: Path) -> AptEnv:
    env = AptEnv(name=f"apt-{unique}", home=ingest_home, pg_dsn=pg_dsn, unique=unique)
    env.save()
    return env
