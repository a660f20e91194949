"""Receiving buckets: where depositors upload tarred bags, one bucket per institution.

Two backends with one small interface (list with etags, open for reading, delete):

* S3: bucket ``aptrust.receiving.<institution>`` (template in the APT block). The etag is
  S3's, and a read passes ``IfMatch`` so the second streaming pass can never read a newer
  upload under the same key than the one the work item was created for.
* A local directory (embedded mode): ``<root>/<institution>/<bag>.tar``. There is no server
  to give an etag, and hashing a 5 TiB tar at every scan is out of the question, so the
  etag is a stable token derived from what changes when a file is replaced: ``"fs-"`` +
  the first 32 hex digits of sha256("<size>:<mtime in ns>"). Re-uploading (or editing) a
  tar gives a new mtime and so a new etag, as an S3 PUT does; copying it with its mtime
  preserved (``cp -p``, ``shutil.copy2``) keeps the etag, so a re-submitted identical copy
  is recognised. The inode is left out on purpose, for that reason.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tasks.staging import confine


class ReceivingChanged(Exception):
    """The tar under the key is no longer the one the work item was made for (a newer upload)."""


@dataclass(frozen=True)
class ReceivedObject:
    institution: str
    bucket: str
    key: str
    etag: str
    size: int


def local_etag(size: int, mtime_ns: int) -> str:
    return "fs-" + hashlib.sha256(f"{size}:{mtime_ns}".encode()).hexdigest()[:32]


class Receiving(ABC):
    @abstractmethod
    def institutions(self) -> list[str]: ...

    @abstractmethod
    def bucket(self, institution: str) -> str: ...

    @abstractmethod
    def list(self, institution: str) -> Iterator[ReceivedObject]:
        """Every key in the institution's bucket (the scanner applies the rules)."""

    @abstractmethod
    def open(self, bucket: str, key: str, etag: str) -> BinaryIO:
        """A stream of exactly the upload with this etag; ReceivingChanged otherwise."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None: ...

    @abstractmethod
    def stat(self, bucket: str, key: str) -> ReceivedObject | None: ...

    @abstractmethod
    def put(self, institution: str, path: str | Path) -> ReceivedObject:
        """Upload a local tar as a depositor would (the CLI's way in); the key is its file name."""


class LocalReceiving(Receiving):
    def __init__(self, root: str | Path, institutions: list[str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._institutions = list(institutions or [])

    def institutions(self) -> list[str]:
        if self._institutions:
            return list(self._institutions)
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def bucket(self, institution: str) -> str:
        return str(confine(self.root, institution))

    def _entry(self, institution: str, path: Path) -> ReceivedObject:
        st = path.stat()
        return ReceivedObject(institution, str(path.parent), path.name, local_etag(st.st_size, st.st_mtime_ns),
                              st.st_size)

    def list(self, institution: str) -> Iterator[ReceivedObject]:
        directory = Path(self.bucket(institution))
        if not directory.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(directory):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue  # partial uploads (rsync, our own copies) are hidden files
                rel = (base / name).relative_to(directory).as_posix()
                path = base / name
                if not path.is_file():
                    continue
                st = path.stat()
                yield ReceivedObject(institution, str(directory), rel, local_etag(st.st_size, st.st_mtime_ns),
                                     st.st_size)

    def _path(self, bucket: str, key: str) -> Path:
        return confine(bucket, key)

    def stat(self, bucket: str, key: str) -> ReceivedObject | None:
        path = self._path(bucket, key)
        if not path.is_file():
            return None
        return self._entry(Path(bucket).name, path)

    def open(self, bucket: str, key: str, etag: str) -> BinaryIO:
        path = self._path(bucket, key)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        except FileNotFoundError:
            raise ReceivingChanged(f"{path} is gone from receiving") from None
        st = os.fstat(fh.fileno())
        if local_etag(st.st_size, st.st_mtime_ns) != etag:
            fh.close()
            raise ReceivingChanged(f"{path} was replaced since it was queued (etag changed)")
        return fh

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    def put(self, institution: str, path: str | Path) -> ReceivedObject:
        """Hard-link (else copy with its mtime) under a hidden name, then rename into place.

        Keeping the mtime keeps the etag, so submitting the same file twice is one upload.
        """
        import shutil
        import uuid

        src = Path(path).resolve()
        directory = Path(self.bucket(institution))
        directory.mkdir(parents=True, exist_ok=True)
        dest = confine(directory, src.name)
        if dest.exists():
            if dest.samefile(src):
                return self._entry(institution, dest)
            a, b = dest.stat(), src.stat()
            if (a.st_size, a.st_mtime_ns) == (b.st_size, b.st_mtime_ns):
                return self._entry(institution, dest)
        tmp = directory / f".upload-{uuid.uuid4().hex}"
        try:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self._entry(institution, dest)


class S3Receiving(Receiving):
    def __init__(self, client: Any, institutions: list[str], bucket_template: str) -> None:
        self.client = client
        self._institutions = list(institutions)
        self.template = bucket_template

    def institutions(self) -> list[str]:
        return list(self._institutions)

    def bucket(self, institution: str) -> str:
        return self.template.format(institution=institution)

    def list(self, institution: str) -> Iterator[ReceivedObject]:
        bucket = self.bucket(institution)
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                yield ReceivedObject(institution, bucket, item["Key"], item["ETag"].strip('"'), int(item["Size"]))

    def stat(self, bucket: str, key: str) -> ReceivedObject | None:
        from tasks.vault import _is_not_found

        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _is_not_found(exc):
                return None
            raise
        return ReceivedObject("", bucket, key, head["ETag"].strip('"'), int(head["ContentLength"]))

    def open(self, bucket: str, key: str, etag: str) -> BinaryIO:
        import io

        from tasks.vault import _BodyRaw, _is_not_found

        try:
            response = self.client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if _is_not_found(exc) or code in ("PreconditionFailed", "412"):
                raise ReceivingChanged(f"s3://{bucket}/{key} with etag {etag} is no longer there") from exc
            raise
        return io.BufferedReader(_BodyRaw(response["Body"]), buffer_size=1 << 20)  # type: ignore[return-value]

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def put(self, institution: str, path: str | Path) -> ReceivedObject:
        bucket = self.bucket(institution)
        key = Path(path).name
        self.client.upload_file(str(path), bucket, key)
        found = self.stat(bucket, key)
        assert found is not None
        return ReceivedObject(institution, bucket, key, found.etag, found.size)


def receiving_from_block(block: Any) -> Receiving:
    """The receiving backend an APT block describes."""
    from tasks.home import home_path

    if block.receiving_kind == "s3":
        return S3Receiving(block.receiving_s3_client(), block.institutions, block.receiving_bucket_template)
    return LocalReceiving(block.receiving_root or home_path("receiving"), block.institutions)
