"""Preservation storage: copy staged files to every target of their storage option, then
prove each copy by size (HEAD/stat) and checksum read back.

A target is any vault (tasks.vault: S3 at any endpoint, or a directory); the key is the
file's UUID, so storing again after a crash or a reingest overwrites, never adds.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.checksum import BLOCK_SIZE, MultiHasher
from tasks.vault import Vault, VaultError, VaultVerifyError

log = logging.getLogger(__name__)

STORE_ALGORITHMS = ("sha256", "md5")
# Bags are mostly small files. tasks.vault's block pump allocates two zeroed BLOCK_SIZE
# buffers per call (~3 ms: 5 s per 1,000 files for puts, as much again for verifies), so
# files under one block take a read()-only path that never asks for those buffers.
SMALL_FILE = BLOCK_SIZE


class _ReadOnly:
    """A file seen through ``read`` only, so the vault reads it without its per-call buffers."""

    def __init__(self, raw) -> None:
        self._raw = raw

    def read(self, n: int = -1) -> bytes:
        return self._raw.read(n)


@dataclass(frozen=True)
class StoreJob:
    path: str  # in the bag, for messages
    uuid: str
    staged: Path
    size: int
    sha256: str
    md5: str
    targets: tuple[str, ...]  # the targets still missing a copy


@dataclass
class StoreOutcome:
    path: str
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # target → {url, size, sha256}
    error: BaseException | None = None


def store_one(job: StoreJob, vaults: dict[str, Vault]) -> StoreOutcome:
    """Put one staged file on each target; a copy whose bytes differ from staging is removed."""
    outcome = StoreOutcome(job.path)
    for target in job.targets:
        vault = vaults[target]
        with open(job.staged, "rb") as fh:
            source = _ReadOnly(fh) if job.size < SMALL_FILE else fh
            put = vault.put_stream(job.uuid, source, size_hint=job.size, algorithms=STORE_ALGORITHMS)
        if put.size != job.size or put.checksums.get("sha256") != job.sha256:
            vault.delete(job.uuid)
            raise VaultError(f"copy of {job.path} to {target} ({put.uri}) differs from staging: "
                             f"{put.size} bytes sha256 {put.checksums.get('sha256')}, "
                             f"expected {job.size} bytes sha256 {job.sha256}")
        outcome.stored[target] = {"url": put.uri, "size": put.size, "sha256": put.checksums["sha256"]}
    return outcome


def store_all(jobs: Iterable[StoreJob], vaults: dict[str, Vault], *, workers: int = 4,
              on_done: Callable[[StoreOutcome, StoreJob], None] | None = None) -> list[StoreOutcome]:
    """Store every job, ``workers`` files at a time; every outcome is reported, errors included.

    Small files dominate bags, and a put is mostly waiting (fsync, HTTP round trips), so a
    few threads pay off; a large file already runs its parts in parallel inside the vault.
    """
    outcomes: list[StoreOutcome] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="apt-store") as pool:
        futures = {pool.submit(store_one, job, vaults): job for job in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                outcome = fut.result()
            except BaseException as exc:  # noqa: BLE001 - collected, the caller raises
                outcome = StoreOutcome(job.path, error=exc)
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome, job)
    return outcomes


def sweep_temporaries(vault: Vault, keys: Iterable[str]) -> list[str]:
    """Remove what killed puts to ``keys`` left on ``vault``: ``.vault-tmp-*`` files named for those
    keys (filesystem) or their incomplete multipart uploads (S3). Other keys' temporaries are never
    touched, so this is safe while other bags are being stored; call it only while holding the
    object's claim, so no live put of these keys exists."""
    from tasks.vault import FilesystemVault, S3Vault, is_temp_of

    wanted = set(keys)
    removed: list[str] = []
    if not wanted:
        return removed
    if isinstance(vault, FilesystemVault):
        by_dir: dict[Path, set[str]] = {}
        for key in wanted:
            final = vault.path(key)
            by_dir.setdefault(final.parent, set()).add(final.name)
        for directory, names in by_dir.items():
            if not directory.is_dir():
                continue
            with os.scandir(directory) as entries:
                for entry in entries:
                    if any(is_temp_of(entry.name, n) for n in names) and entry.is_file(follow_symlinks=False):
                        Path(entry.path).unlink(missing_ok=True)
                        removed.append(entry.path)
    elif isinstance(vault, S3Vault):
        full = {vault.object_key(k): k for k in wanted}
        for upload in vault.incomplete_uploads():
            if upload["Key"] in full:
                vault.client.abort_multipart_upload(Bucket=vault.bucket, Key=upload["Key"],
                                                    UploadId=upload["UploadId"])
                removed.append(f"s3://{vault.bucket}/{upload['Key']} (upload {upload['UploadId']})")
    if removed:
        log.info("removed %d temporar%s of an earlier, interrupted store: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", ", ".join(removed[:5]))
    return removed


def verify_copy(vault: Vault, key: str, *, size: int, sha256: str, md5: str | None = None) -> dict[str, Any]:
    """Size from the target's metadata (HEAD / stat), then every byte read back and hashed."""
    checksums = {"sha256": sha256}
    if md5:
        checksums["md5"] = md5
    if size >= SMALL_FILE:
        result = vault.verify(key, size=size, checksums=checksums)
        return {"url": result.uri, "size": result.size, "sha256": result.checksums["sha256"]}
    uri = vault.uri(key)
    stored = vault.stat(key)
    if stored != size:
        raise VaultVerifyError(f"{uri}: " + ("object is missing" if stored is None else
                                             f"size is {stored}, expected {size}"),
                               key=key, uri=uri, expected={"size": size}, actual={"size": stored})
    hasher = MultiHasher(list(checksums))
    try:
        with vault.open_read(key) as fh:
            while data := fh.read(SMALL_FILE):
                hasher.update(data)
    except FileNotFoundError as exc:
        raise VaultVerifyError(f"{uri}: object vanished while being read", key=key, uri=uri) from exc
    actual = hasher.hexdigests()
    if hasher.size != size:
        raise VaultVerifyError(f"{uri}: read back {hasher.size} bytes, expected {size}", key=key, uri=uri,
                               expected={"size": size}, actual={"size": hasher.size})
    bad = sorted(a for a, v in checksums.items() if actual[a] != v.lower())
    if bad:
        raise VaultVerifyError(f"{uri}: checksum mismatch: " + ", ".join(
            f"{a} {actual[a]} != expected {checksums[a]}" for a in bad), key=key, uri=uri,
            expected={a: checksums[a] for a in bad}, actual={a: actual[a] for a in bad})
    return {"url": uri, "size": size, "sha256": actual["sha256"]}


__all__ = ["STORE_ALGORITHMS", "StoreJob", "StoreOutcome", "VaultVerifyError", "store_all", "store_one",
           "sweep_temporaries", "verify_copy"]
