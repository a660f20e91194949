"""APT block: where bags arrive (receiving buckets), where preserved files go (targets per
storage option), and how the scanner starts ingests.

Every field has an embedded default, so the ``default`` document need not exist: bags are
read from ``$INGEST_HOME/receiving/<institution>/`` and stored under
``$INGEST_HOME/vault/apt-<target>/``.

Other systems are referenced by document *name* (an Ingest Vault per target, prefect-aws
AwsCredentials for the receiving buckets), not nested inline: on Prefect 3.8.8 every save of
a block that nests an S3Bucket/AwsCredentials spends 1-4 s regenerating JSON schemas, and a
named document can be shared by every deployment and rotated in one place.
"""
from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from blocks.vault import VaultBlock

TIB = 1 << 40

# APTrust's storage options and where each one's copies go. Standard keeps two copies in
# two regions (S3 Virginia + Glacier Oregon at APTrust); every other option keeps one.
DEFAULT_STORAGE_TARGETS: dict[str, list[str]] = {
    "Standard": ["standard-va", "standard-or"],
    "Glacier-OH": ["glacier-oh"],
    "Glacier-OR": ["glacier-or"],
    "Glacier-VA": ["glacier-va"],
    "Glacier-Deep-OH": ["glacier-deep-oh"],
    "Glacier-Deep-OR": ["glacier-deep-or"],
    "Glacier-Deep-VA": ["glacier-deep-va"],
    "Wasabi-OR": ["wasabi-or"],
    "Wasabi-TX": ["wasabi-tx"],
    "Wasabi-VA": ["wasabi-va"],
}


class AptBlock(Block):
    """Receiving buckets, preservation targets by storage option, and scanner settings."""

    _block_type_name = "Ingest APT"
    _block_type_slug = "ingest-apt"
    _description = ("APTrust bag ingest: receiving buckets (S3 or a local directory), preservation targets "
                    "per storage option (vault blocks), size cap, and the deployment the scanner starts.")

    receiving_kind: Literal["filesystem", "s3"] = Field(
        default="filesystem", description="Where depositors upload tars: local directories or S3 buckets")
    receiving_root: str | None = Field(
        default=None, description="kind=filesystem: one directory per institution under this root "
                                  "(default $INGEST_HOME/receiving)")
    receiving_bucket_template: str = Field(
        default="aptrust.receiving.{institution}", description="kind=s3: bucket name of an institution")
    receiving_credentials_block: str | None = Field(
        default=None, description="kind=s3: name of a prefect-aws AwsCredentials document (endpoint_url "
                                  "in its client parameters) for the receiving buckets")
    institutions: list[str] = Field(
        default_factory=list, description="Institutions to scan (filesystem: empty = every directory)")
    storage_targets: dict[str, list[str]] = Field(
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_STORAGE_TARGETS.items()},
        description="Storage option → target names; the first target is the primary copy")
    target_vault_blocks: dict[str, str] = Field(
        default_factory=dict, description="Target name → name of a saved Ingest Vault document (S3 or directory)")
    target_roots: dict[str, str] = Field(
        default_factory=dict, description="Target name → directory, for filesystem targets without a document")
    staging_root: str | None = Field(default=None, description="Default $INGEST_HOME/staging/apt")
    max_bag_size: int = Field(default=5 * TIB, description="Bags larger than this are refused (bytes)")
    delete_after_ingest: bool = Field(
        default=True, description="Delete the tar from receiving after a successful ingest (as APTrust does); "
                                  "invalid bags are always marked for deletion")
    deployment_name: str | None = Field(
        default=None, description="'ingest-apt-bag/<deployment>': the scanner starts deployment runs; "
                                  "empty: it calls the ingest flow in-process")
    stale_after_hours: float = Field(
        default=24.0, description="A Started item silent this long is flagged for admin review by the scanner")

    def target_names(self, storage_option: str) -> list[str]:
        targets = self.storage_targets.get(storage_option)
        if not targets:
            raise ValueError(f"no preservation targets configured for storage option {storage_option!r}")
        return list(targets)

    def target_vault_block(self, target: str) -> VaultBlock:
        """A named Ingest Vault document, else a directory: configured, or the embedded one."""
        from blocks.register import load_block
        from tasks.home import home_path

        if target in self.target_vault_blocks:
            return load_block(VaultBlock, self.target_vault_blocks[target])
        root = self.target_roots.get(target) or str(home_path("vault") / f"apt-{target}")
        return VaultBlock(root=root)

    def receiving_s3_client(self):
        from prefect_aws import AwsCredentials

        if not self.receiving_credentials_block:
            raise ValueError("receiving_kind 's3' needs receiving_credentials_block")
        return AwsCredentials.load(self.receiving_credentials_block).get_s3_client()
