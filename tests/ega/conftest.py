"""EGA fixtures: archive keys, a gpg home that encrypts like a submitter, and a per-test
configuration (block documents) pointing at the real PostgreSQL, RabbitMQ and a vault."""
from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pika
import pytest

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="session")
def ega_keys(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from tasks.keys import ensure_c4gh_keypair, ensure_pgp_keypair

    keys = tmp_path_factory.mktemp("ega-keys")
    pgp_sec, pgp_pub = ensure_pgp_keypair(keys, PASSPHRASE)
    c4gh_pub, c4gh_sec = ensure_c4gh_keypair(keys, PASSPHRASE)
    return SimpleNamespace(dir=keys, pgp_sec=Path(pgp_sec), pgp_pub=Path(pgp_pub), c4gh_pub=Path(c4gh_pub),
                           c4gh_sec=Path(c4gh_sec), passphrase=PASSPHRASE)


@pytest.fixture(scope="session")
def gpg(tmp_path_factory: pytest.TempPathFactory, ega_keys: SimpleNamespace):
    """encrypt(src, dst, *gpg_options, stdin=False): the gpg CLI, as a submitter runs it."""
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    base = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--yes", "--trust-model", "always"]
    subprocess.run(base + ["--import", str(ega_keys.pgp_pub)], check=True, capture_output=True)

    def encrypt(src: Path, dst: Path, *options: str, stdin: bool = False) -> Path:
        cmd = base + list(options) + ["--encrypt", "--recipient-file", str(ega_keys.pgp_pub), "-o", str(dst)]
        if stdin:  # unknown length: gpg writes partial body lengths
            with open(src, "rb") as fh:
                subprocess.run(cmd, stdin=fh, check=True, capture_output=True)
        else:
            subprocess.run(cmd + [str(src)], check=True, capture_output=True)
        return dst

    encrypt.base = base  # type: ignore[attr-defined]
    return encrypt


@dataclass
class EgaEnv:
    name: str
    amqp_url: str
    cega: str
    lega: str
    inbox: Path
    vault_root: Path
    staging: Path
    keys: SimpleNamespace
    user: str = "jane"
    captured: dict[str, str] = field(default_factory=dict)

    def upload(self, user: str, relpath: str, data: bytes) -> Path:
        path = self.inbox / user / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def run(self, raw: dict[str, Any], correlation_id: str | None = None) -> tuple[int, dict[str, Any]]:
        from flows.ega.cli import run_message

        return run_message(raw, correlation_id=correlation_id, config_block=self.name)

    def messages(self, exchange: str) -> list[tuple[str, dict[str, Any], Any]]:
        """Everything published so far on cega or lega: (routing_key, body, properties)."""
        out = []
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            ch = conn.channel()
            while True:
                method, props, body = ch.basic_get(self.captured[exchange], auto_ack=True)
                if method is None:
                    break
                out.append((method.routing_key, json.loads(body), props))
        finally:
            conn.close()
        return out

    def vault_files(self) -> list[Path]:
        return sorted(p for p in self.vault_root.rglob("*") if p.is_file())

    def staging_files(self) -> list[Path]:
        return sorted(p for p in self.staging.rglob("*") if p.is_file()) if self.staging.exists() else []


def save_blocks(name: str, *, pg_dsn: str, amqp_url: str | None, cega: str, lega: str, keys: SimpleNamespace,
                vault_root: Path | None = None, vault_block=None, keyserver_url: str | None = None,
                protocol: str = "legacy", sda: str = "sda") -> None:
    from pydantic import SecretStr

    from blocks.broker import BrokerBlock
    from blocks.keyserver import KeyserverBlock
    from blocks.registry import RegistryBlock
    from blocks.vault import VaultBlock

    (vault_block or VaultBlock(root=str(vault_root))).save(name, overwrite=True)
    RegistryBlock(dsn=SecretStr(pg_dsn)).save(name, overwrite=True)
    BrokerBlock(amqp_url=SecretStr(amqp_url) if amqp_url else None, status_exchange=cega,
                internal_exchange=lega, protocol=protocol, sda_exchange=sda).save(name, overwrite=True)
    KeyserverBlock(url=keyserver_url, key_file=None if keyserver_url else str(keys.pgp_sec),
                   passphrase=SecretStr(keys.passphrase), c4gh_public_key=str(keys.c4gh_pub),
                   cache_ttl_seconds=60).save(name, overwrite=True)


@pytest.fixture
def ega_env(prefect_api, pg_dsn: str, amqp_url: str, unique: str, ega_keys: SimpleNamespace,
            ingest_home: Path) -> EgaEnv:
    from tasks.notify import declare_topology

    cega, lega = f"cega-{unique}", f"lega-{unique}"
    captured = {"cega": f"{cega}-all", "lega": f"{lega}-all"}
    declare_topology(amqp_url, [(cega, "topic"), (lega, "topic")], list(captured.values()),
                     [(captured["cega"], cega, "#"), (captured["lega"], lega, "#")])
    env = EgaEnv(name=f"t-{unique}", amqp_url=amqp_url, cega=cega, lega=lega, inbox=ingest_home / "inbox",
                 vault_root=ingest_home / "vault", staging=ingest_home / "staging", keys=ega_keys,
                 captured=captured, user=f"user-{unique}")
    env.vault_root.mkdir(parents=True, exist_ok=True)
    save_blocks(env.name, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=cega, lega=lega, keys=ega_keys,
                vault_root=env.vault_root)
    yield env
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    for q in captured.values():
        ch.queue_delete(q)
    for x in (cega, lega):
        ch.exchange_delete(x)
    conn.close()


@pytest.fixture
def sda_env(prefect_api, pg_dsn: str, amqp_url: str, unique: str, ega_keys: SimpleNamespace,
            ingest_home: Path) -> EgaEnv:
    """The same, with the broker block in ``sda`` mode: everything goes to one exchange (``sda-<unique>``),
    captured by a queue bound with ``#``."""
    from tasks.notify import declare_topology

    sda = f"sda-{unique}"
    captured = {"sda": f"{sda}-all"}
    declare_topology(amqp_url, [(sda, "topic")], [captured["sda"]], [(captured["sda"], sda, "#")])
    env = EgaEnv(name=f"t-{unique}", amqp_url=amqp_url, cega=sda, lega=sda, inbox=ingest_home / "inbox",
                 vault_root=ingest_home / "vault", staging=ingest_home / "staging", keys=ega_keys,
                 captured=captured, user=f"user-{unique}")
    env.vault_root.mkdir(parents=True, exist_ok=True)
    save_blocks(env.name, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=sda, lega=sda, keys=ega_keys,
                vault_root=env.vault_root, protocol="sda", sda=sda)
    yield env
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    ch.queue_delete(captured["sda"])
    ch.exchange_delete(sda)
    conn.close()


def new_accession_id() -> str:
    """SDA's accession ids are EGAF and exactly 11 digits."""
    return "EGAF" + str(uuid.uuid4().int)[:11]


def new_stable_id() -> str:
    return "EGAF" + uuid.uuid4().hex[:11].upper()
