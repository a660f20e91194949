"""Broker block: the AMQP broker (or webhook) status notifications go to; empty = outbox file."""
from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class BrokerBlock(Block):
    """Where status notifications go. With neither URL set they are kept in $INGEST_HOME/outbox."""

    _block_type_name = "Ingest Broker"
    _block_type_slug = "ingest-broker"
    _description = "AMQP URL and exchanges for status messages (or a webhook); unset: JSON Lines outbox."

    amqp_url: SecretStr | None = Field(default=None, description="amqp://user:pass@host:5672/vhost")
    webhook_url: SecretStr | None = Field(default=None, description="HTTP endpoint receiving JSON status posts")
    status_exchange: str = Field(default="cega", description="Exchange for submitter-facing status (EGA: cega)")
    internal_exchange: str = Field(default="lega", description="Exchange for internal events (EGA: lega)")
    protocol: Literal["legacy", "sda"] = Field(
        default="legacy",
        description="EGA message protocol: legacy (LocalEGA files/cega/lega) or sda (Federated EGA, "
                    "neicnordic/sensitive-data-archive); docs/ega.md says why legacy is the default")
    sda_exchange: str = Field(default="sda", description="sda protocol: the node's exchange (vhost sda)")
    outbox_fallback: bool = Field(default=True, description="Keep messages in the outbox when the broker is down")

    def transport(self):
        from tasks.notify import TransportConfig

        return TransportConfig(
            amqp_url=self.amqp_url.get_secret_value() if self.amqp_url else None,
            webhook_url=self.webhook_url.get_secret_value() if self.webhook_url else None,
            fallback_to_outbox=self.outbox_fallback,
        )
