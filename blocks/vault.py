"""Vault block: a local directory by default, or any S3-compatible bucket via prefect-aws."""
from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials, S3Bucket
from pydantic import Field

from tasks.home import home_path
from tasks.vault import FilesystemVault, S3Vault, Vault


class VaultBlock(Block):
    """Where archived objects live. ``filesystem`` needs only ``root``; ``s3`` takes a prefect-aws S3Bucket."""

    _block_type_name = "Ingest Vault"
    _block_type_slug = "ingest-vault"
    _description = "Archive storage: a local directory or an S3-compatible bucket (endpoint_url in the credentials)."

    kind: Literal["filesystem", "s3"] = "filesystem"
    root: str | None = Field(default=None, description="Directory for kind=filesystem (default $INGEST_HOME/vault)")
    s3_bucket: S3Bucket | None = Field(default=None, description="prefect-aws S3Bucket for kind=s3")

    def vault(self) -> Vault:
        if self.kind == "filesystem":
            return FilesystemVault(self.root or home_path("vault"))
        if self.s3_bucket is None:
            raise ValueError("vault kind 's3' needs an s3_bucket")
        client = self.s3_bucket.credentials.get_s3_client()
        return S3Vault.from_boto_client(client, self.s3_bucket.bucket_name, prefix=self.s3_bucket.bucket_folder or "")

    @classmethod
    def for_s3(cls, bucket: str, *, endpoint_url: str | None = None, access_key_id: str | None = None,
               secret_access_key: str | None = None, region: str | None = None, prefix: str = "",
               session_token: str | None = None) -> "VaultBlock":
        """Build an S3 vault block from plain settings (what `init --s3-bucket` and tests use); the secret
        and the session token are kept as SecretStr by prefect-aws."""
        from prefect_aws.client_parameters import AwsClientParameters

        creds = AwsCredentials(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            aws_session_token=session_token, region_name=region,
            aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url),
        )
        return cls(kind="s3", s3_bucket=S3Bucket(bucket_name=bucket, credentials=creds, bucket_folder=prefix))
