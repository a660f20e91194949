"""Everything one EGA ingest needs, resolved once per run from block documents."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.home import home_path
from tasks.registry import Registry
from tasks.staging import StagingArea


@dataclass
class EgaConfig:
    registry: Registry
    vault: Any  # tasks.vault.Vault
    keys: Any  # flows.ega.keyserver.KeySource
    vault_public_key: bytes
    transport: Any  # tasks.notify.TransportConfig
    inbox_root: Path = field(default_factory=lambda: home_path("inbox"))
    staging: StagingArea = field(default_factory=lambda: StagingArea(home_path("staging") / "ega"))
    status_exchange: str = "cega"
    internal_exchange: str = "lega"
    protocol: str = "legacy"  # or "sda" (blocks/broker.py)
    sda_exchange: str = "sda"

    def close(self) -> None:
        self.registry.close()


def block_types() -> list[type]:
    """The block documents one EGA ingest reads (keyserver, broker, registry, vault), in that order."""
    from blocks.broker import BrokerBlock
    from blocks.keyserver import KeyserverBlock
    from blocks.registry import RegistryBlock
    from blocks.vault import VaultBlock

    return [KeyserverBlock, BrokerBlock, RegistryBlock, VaultBlock]


def load_config(block_name: str = "default", *, inbox_root: str | None = None) -> EgaConfig:
    from blocks.register import load_blocks
    from tasks.keys import load_c4gh_public_key

    keyserver, broker, registry, vault = load_blocks(block_types(), block_name)
    return EgaConfig(
        registry=registry.open(),
        vault=vault.vault(),
        keys=keyserver.source(),
        vault_public_key=load_c4gh_public_key(keyserver.vault_public_key_path()),
        transport=broker.transport(),
        inbox_root=Path(inbox_root) if inbox_root else home_path("inbox"),
        status_exchange=broker.status_exchange,
        internal_exchange=broker.internal_exchange,
        protocol=broker.protocol,
        sda_exchange=broker.sda_exchange,
    )
