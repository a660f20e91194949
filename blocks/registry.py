"""Registry block: where the PostgreSQL registry lives (empty DSN = embedded server)."""
from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.registry import Registry, open_registry


class RegistryBlock(Block):
    """PostgreSQL registry. Leave the DSN empty to use the embedded server in $INGEST_HOME/pg."""

    _block_type_name = "Ingest Registry"
    _block_type_slug = "ingest-registry"
    _description = "PostgreSQL DSN of the archive registry (empty: embedded PostgreSQL under INGEST_HOME)."

    dsn: SecretStr | None = Field(default=None, description="postgresql://user:pass@host:5432/db")

    def open(self, *, migrate: bool = True) -> Registry:
        return open_registry(self.dsn.get_secret_value() if self.dsn else None, migrate=migrate)
