"""Setting up an S3 vault so that the first ingest cannot be the one that finds the mistake.

``init`` resolves credentials (flags, then the environment, then a named profile) into values it
can store, creates the bucket when it is missing, and proves the vault with a put, a read and a
delete. Each failure names the S3 permission (IAM action) or the setting that is missing.
"""
from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass
from typing import Any

from tasks.errors import UserError


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str | None
    secret_access_key: str | None
    session_token: str | None
    source: str  # "flags", "environment", "profile <name>", or "none"


def resolve_credentials(*, access_key_id: str | None = None, secret_access_key: str | None = None,
                        profile: str | None = None) -> S3Credentials:
    """Flags win, then a named profile when one is given, then AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."""
    if access_key_id or secret_access_key:
        if not (access_key_id and secret_access_key):
            raise UserError("S3 credentials need both --s3-access-key-id and --s3-secret-access-key")
        return S3Credentials(access_key_id, secret_access_key, None, "flags")
    if profile:
        import boto3
        from botocore.exceptions import ProfileNotFound

        try:
            found = boto3.Session(profile_name=profile).get_credentials()
        except ProfileNotFound as exc:
            raise UserError(f"S3 profile {profile!r} not found in the AWS config or credentials files") from exc
        if found is None:
            raise UserError(f"S3 profile {profile!r} has no credentials")
        frozen = found.get_frozen_credentials()
        return S3Credentials(frozen.access_key, frozen.secret_key, frozen.token, f"profile {profile}")
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return S3Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN"), "environment")
    return S3Credentials(None, None, None, "none")


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""


def _explain(exc: Exception, action: str, resource: str) -> UserError:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return UserError("no S3 credentials: pass --s3-access-key-id and --s3-secret-access-key, set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a profile with --s3-profile")
    if isinstance(exc, EndpointConnectionError):
        return UserError(f"cannot reach the S3 endpoint: {exc}")
    code = _code(exc)
    if code in ("AccessDenied", "403", "AllAccessDisabled"):
        return UserError(f"S3 refused {action} on {resource}: the credentials lack permission {action}")
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return UserError(f"S3 refused the credentials ({code}): check the access key id and secret")
    return UserError(f"S3 {action} on {resource} failed: {code or type(exc).__name__}: {exc}")


def ensure_bucket(client: Any, bucket: str, region: str | None = None) -> str:
    """``exists`` or ``created``; otherwise a UserError naming the permission S3 refused."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
        return "exists"
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise _explain(exc, "s3:ListBucket", f"arn:aws:s3:::{bucket}") from exc
    except Exception as exc:
        raise _explain(exc, "s3:ListBucket", f"arn:aws:s3:::{bucket}") from exc
    options: dict[str, Any] = {"Bucket": bucket}
    if region and region != "us-east-1":
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**options)
    except ClientError as exc:
        if _code(exc) in ("BucketAlreadyOwnedByYou",):
            return "exists"
        raise _explain(exc, "s3:CreateBucket", f"arn:aws:s3:::{bucket}") from exc
    return "created"


def prove_vault(vault: Any) -> dict[str, Any]:
    """Put, read back and delete a small probe object through the vault itself (the path ingests use)."""
    key = f".ingest-probe-{uuid.uuid4().hex}"
    data = uuid.uuid4().bytes * 64
    where = vault.uri(key)
    steps = (("s3:PutObject", lambda: vault.put_stream(key, io.BytesIO(data), size_hint=len(data))),
             ("s3:GetObject", lambda: _read_back(vault, key, data)),
             ("s3:DeleteObject", lambda: vault.delete(key)))
    for action, step in steps:
        try:
            step()
        except UserError:
            raise
        except Exception as exc:
            if action != "s3:PutObject":
                _best_effort_delete(vault, key)
            if not hasattr(exc, "response") and not type(exc).__module__.startswith("botocore"):
                raise UserError(f"the vault at {where} failed the probe ({action.split(':')[1]}): "
                                f"{type(exc).__name__}: {exc}") from exc
            raise _explain(exc, action, where) from exc
    return {"probe": "put, read back and deleted", "uri": where.rsplit("/.ingest-probe-", 1)[0]}


def _read_back(vault: Any, key: str, expected: bytes) -> None:
    with vault.open_read(key) as stream:
        got = stream.read()
    if got != expected:
        raise UserError(f"the vault returned different bytes for the probe object {vault.uri(key)}")


def _best_effort_delete(vault: Any, key: str) -> None:
    try:
        vault.delete(key)
    except Exception:  # noqa: BLE001 - the first error is the one to report
        pass
