"""Everything one APT ingest or scan needs, resolved once per run from block documents."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.home import home_path
from tasks.registry import Registry
from tasks.staging import StagingArea


@dataclass
class AptConfig:
    registry: Registry
    receiving: Any  # flows.apt.receiving.Receiving
    block: Any  # blocks.apt.AptBlock
    block_name: str = "default"
    staging: StagingArea = field(default_factory=lambda: StagingArea(home_path("staging") / "apt"))
    _targets: dict[str, Any] = field(default_factory=dict)

    @property
    def max_bag_size(self) -> int:
        return self.block.max_bag_size

    def target_names(self, storage_option: str) -> list[str]:
        return self.block.target_names(storage_option)

    def target(self, name: str) -> Any:
        """The vault (tasks.vault.Vault) of a preservation target, opened once per run."""
        if name not in self._targets:
            self._targets[name] = self.block.target_vault_block(name).vault()
        return self._targets[name]

    def close(self) -> None:
        self.registry.close()


def load_config(block_name: str = "default") -> AptConfig:
    from blocks.apt import AptBlock
    from blocks.register import load_blocks
    from blocks.registry import RegistryBlock
    from flows.apt.receiving import receiving_from_block

    block, registry = load_blocks([AptBlock, RegistryBlock], block_name)
    staging_root = Path(block.staging_root) if block.staging_root else home_path("staging") / "apt"
    return AptConfig(
        registry=registry.open(),
        receiving=receiving_from_block(block),
        block=block,
        block_name=block_name,
        staging=StagingArea(staging_root),
    )
