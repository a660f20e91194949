"""Fixtures for the FITS tests: synthetic SST cubes, a fake SVO per test and a client bound to it."""
from __future__ import annotations

import sys
import uuid
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


# ---------------------------------------------------------------- flow tests: per-test block documents

class FitsEnv:
    """Block documents saved under a unique name, pointing at the real PostgreSQL and (optionally) a fake SVO."""

    def __init__(self, name: str, home: Path, dsn: str) -> None:
        self.name = name
        self.home = home
        self.dsn = dsn
        self.science = home / "science"
        self.previews = home / "previews"
        self.science.mkdir(parents=True, exist_ok=True)

    def save_blocks(self, *, svo_url: str | None = None, svo_user: str | None = SVO_USER,
                    svo_key: str | None = SVO_KEY, **svo_options) -> None:
        from pydantic import SecretStr

        from blocks.broker import BrokerBlock
        from blocks.registry import RegistryBlock
        from blocks.svo import SvoBlock

        RegistryBlock(dsn=SecretStr(self.dsn)).save(self.name, overwrite=True)
        BrokerBlock().save(self.name, overwrite=True)          # no broker: status messages go to the outbox
        SvoBlock(url=svo_url or "http://127.0.0.1:9/service/api/svo", user=svo_user,
                 api_key=SecretStr(svo_key) if svo_key else None, **svo_options).save(self.name, overwrite=True)

    def cube(self, subdir: str = "2019-04-16/CRISP", spec: CubeSpec | None = None, **kwargs) -> Path:
        directory = self.science / subdir
        directory.mkdir(parents=True, exist_ok=True)
        return write_cube(directory, spec or CubeSpec(), **kwargs)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.science).as_posix()

    def run(self, path: str | Path, **kwargs):
        from flows.fits.cli import run_cube

        text = self.rel(path) if isinstance(path, Path) and path.is_absolute() else str(path)
        return run_cube(text, config_block=self.name, **kwargs)

    def cli(self, capsys, *argv: str) -> tuple[int, dict]:
        """``python flows/run.py ...`` in-process: (exit code, the last JSON line)."""
        import json

        from flows.run import main

        capsys.readouterr()
        code = main([*argv, "--config", self.name])
        out = capsys.readouterr().out.strip().splitlines()
        return code, json.loads(out[-1])

    def registry(self):
        from tasks.registry import Registry

        return Registry(self.dsn)

    def outbox(self) -> list[dict]:
        import json

        path = self.home / "outbox" / "notifications.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="session")
def fits_database():
    """A database for the FITS flow tests only (migrated once), emptied before each test."""
    import os

    import psycopg

    from tasks.registry import Registry

    # Not `from tests.conftest import ...`: that would execute the root conftest a second time as
    # another module, and its top level resets INGEST_HOME under the running test.
    admin = os.environ.get("INGEST_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"fits_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{admin.rsplit('/', 1)[0]}/{name}"
    with Registry(dsn) as registry:
        registry.migrate()
    yield dsn
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fits_dsn(fits_database: str) -> str:
    """Work orders are keyed on paths relative to *a* science root, and every test has its own root
    with the same relative names: each test starts from empty tables (tests run one at a time)."""
    from tasks.registry import Registry

    with Registry(fits_database) as registry:
        tables = [r["tablename"] for r in registry.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations' "
            "AND tablename <> 'fits_instruments'")]
        registry.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    return fits_database


@pytest.fixture
def fits_env(prefect_api, fits_dsn: str, unique: str, ingest_home: Path) -> FitsEnv:
    env = FitsEnv(f"fits-{unique}", ingest_home, fits_dsn)
    env.save_blocks()
    return env
