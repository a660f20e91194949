"""What a fixity run needs, from the same block documents the ingest flows use (one name for all)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flows.fixity.checks import Resources
from tasks.registry import Registry

# Where each domain announces a failed check. EGA: a system error, never files.error (which tells a
# submitter their upload was wrong): on an SDA node an info-error (exchange sda, routing key error),
# else on the internal exchange (lega) as fixity.error; the others: their status exchange.
EGA_ERROR_ROUTING_KEY = "fixity.error"


@dataclass
class Channel:
    exchange: str
    routing_key: str


@dataclass
class FixityConfig:
    registry: Registry
    transport: Any  # tasks.notify.TransportConfig
    broker: Any  # blocks.broker.BrokerBlock
    block_name: str = "default"

    def channel(self, domain: str) -> Channel:
        if domain == "ega":
            if self.ega_sda:  # an SDA node: info-error on the node's exchange (routing key ``error``)
                return Channel(getattr(self.broker, "sda_exchange", "sda"), "error")
            return Channel(self.broker.internal_exchange, EGA_ERROR_ROUTING_KEY)
        if domain == "apt":
            from flows.apt.flow import STATUS_EXCHANGE

            return Channel(STATUS_EXCHANGE, "apt.fixity.failed")
        if domain == "fits":
            from flows.fits.steps import STATUS_EXCHANGE

            return Channel(STATUS_EXCHANGE, "fits.fixity.failed")
        from blocks.ngas import NgasBlock
        from blocks.register import load_block

        return Channel(load_block(NgasBlock, self.block_name).status_exchange, "nrao.fixity.failed")

    @property
    def ega_sda(self) -> bool:
        return getattr(self.broker, "protocol", "legacy") == "sda"

    def close(self) -> None:
        self.registry.close()


def load_config(block_name: str = "default") -> FixityConfig:
    from blocks.broker import BrokerBlock
    from blocks.register import load_blocks
    from blocks.registry import RegistryBlock

    registry, broker = load_blocks([RegistryBlock, BrokerBlock], block_name)
    return FixityConfig(registry=registry.open(), transport=broker.transport(), broker=broker,
                        block_name=block_name)


def open_resources(domain: str, block_name: str = "default") -> Resources:
    """The storage one domain's checks read from, opened once per batch."""
    from blocks.register import load_block

    res = Resources()
    if domain == "ega":
        from blocks.vault import VaultBlock

        res.vault = load_block(VaultBlock, block_name).vault()
    elif domain == "apt":
        from blocks.apt import AptBlock

        block = load_block(AptBlock, block_name)
        vaults: dict[str, Any] = {}

        def target(name: str) -> Any:
            if name not in vaults:
                vaults[name] = block.target_vault_block(name).vault()
            return vaults[name]

        res.apt_target = target
    elif domain == "nrao":
        from blocks.ngas import NgasBlock

        block = load_block(NgasBlock, block_name)
        res.ngas = block.client(block.resolved_url())
        res.closers.append(res.ngas.close)
    return res
