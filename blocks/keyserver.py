"""Keyserver block: where the archive's private OpenPGP keys and their passphrase come from."""
from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from tasks.home import home_path


class KeyserverBlock(Block):
    """Either ``url`` (a LocalEGA-style keyserver) or ``key_file`` (an armored private key on disk)."""

    _block_type_name = "Ingest Keyserver"
    _block_type_slug = "ingest-keyserver"
    _description = "Private OpenPGP keys for decrypting uploads: keyserver URL + token, or a local key file."

    url: str | None = Field(default=None, description="Keyserver base URL; GET <url>/retrieve/pgp/<keyid>")
    token: SecretStr | None = Field(default=None, description="Bearer token for the keyserver")
    key_file: str | None = Field(default=None, description="Armored private key (default $INGEST_HOME/keys/ega.sec.asc)")
    passphrase: SecretStr | None = Field(default=None, description="Passphrase of the private key")
    cache_ttl_seconds: float = 300.0
    c4gh_public_key: str | None = Field(default=None,
                                        description="Vault Crypt4GH public key (default $INGEST_HOME/keys/vault.c4gh.pub)")

    def source(self):
        from flows.ega.keyserver import FileKeySource, HttpKeySource

        secret = self.passphrase.get_secret_value() if self.passphrase else None
        if self.url:
            token = self.token.get_secret_value() if self.token else None
            return HttpKeySource(self.url, token=token, passphrase=secret, ttl=self.cache_ttl_seconds)
        return FileKeySource(self.key_file or home_path("keys") / "ega.sec.asc", secret)

    def vault_public_key_path(self) -> str:
        return self.c4gh_public_key or str(home_path("keys") / "vault.c4gh.pub")
