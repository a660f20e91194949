"""NGAS block: the NRAO archive server, plus where NRAO products are read from and staged."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.home import home_path


class NgasBlock(Block):
    """An NGAS server for NRAO products. Leave ``url`` empty to archive into a local NGAS-compatible
    server under $INGEST_HOME/ngas (flows/nrao/local_ngas.py), started inside the run's process."""

    _block_type_name = "Ingest NGAS"
    _block_type_slug = "ingest-ngas"
    _description = ("NGAS URL and archive options for NRAO products, the source and staging roots, and the "
                    "exchange for status messages (empty URL: a local NGAS-compatible archive in INGEST_HOME).")

    url: str | None = Field(default=None, description="NGAS base URL, e.g. http://ngas:7777 (empty: local archive)")
    archive_command: Literal["ARCHIVE", "QARCHIVE"] = Field(default="ARCHIVE", description="Push command")
    crc_variant: Literal["crc32", "crc32c", "crc32z"] | None = Field(
        default="crc32c", description="CRC asked of NGAS and checked against ours (empty: the server chooses)")
    timeout: float = Field(default=300.0, description="Seconds per HTTP request (a whole file upload)")
    retries: int = Field(default=4, description="Attempts per request on 5xx/connection errors, inside one task try")
    backoff_seconds: float = Field(default=1.0, description="First pause between attempts (doubles, max 30 s)")
    username: str | None = Field(default=None, description="HTTP basic auth user, if NGAS requires one")
    password: SecretStr | None = None
    source_root: str | None = Field(default=None, description="Where CASA runs and SDMs are read from; every "
                                    "source must lie under it (default $INGEST_HOME/science/nrao)")
    staging_root: str | None = Field(default=None, description="Per-request staging directories "
                                     "(default $INGEST_HOME/staging/nrao)")
    local_root: str | None = Field(default=None, description="Storage of the local archive when url is empty "
                                   "(default $INGEST_HOME/ngas)")
    status_exchange: str = Field(default="nrao", description="Exchange for nrao.ingest.completed/failed")

    def source_path(self) -> Path:
        return Path(self.source_root) if self.source_root else home_path("science") / "nrao"

    def staging_path(self) -> Path:
        return Path(self.staging_root) if self.staging_root else home_path("staging") / "nrao"

    def local_path(self) -> Path:
        return Path(self.local_root) if self.local_root else home_path("ngas")

    def resolved_url(self) -> str:
        """The server to talk to; with no URL, the process's local archive (started on first use)."""
        if self.url:
            return self.url
        from flows.nrao.local_ngas import serve

        return serve(self.local_path()).url

    def client(self, url: str | None = None):
        from flows.nrao.ngas import NgasClient

        auth = None
        if self.username:
            auth = (self.username, self.password.get_secret_value() if self.password else "")
        return NgasClient(url or self.resolved_url(), archive_command=self.archive_command,
                          crc_variant=self.crc_variant, retries=self.retries, backoff=self.backoff_seconds,
                          timeout=self.timeout, auth=auth)
