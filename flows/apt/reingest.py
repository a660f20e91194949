"""Reingest rules: which files of a bag must be stored, and under which UUID.

* Not preserved at all: ``bagit.txt``, ``fetch.txt``, payload manifests and tag manifests
  (they describe the bag, the registry keeps their content as checksums). ``bag-info.txt``,
  ``aptrust-info.txt`` and every other tag file are preserved like payload.
* A file already in the registry is *changed* when its newest digest for sha512, sha256 or
  md5 differs from the one computed now, or when its size differs (APTrust compares
  digests only; a size change with a colliding digest cannot happen for these algorithms,
  but a registry row with only an md5 makes the size worth checking). Only new and changed
  files are stored again.
* A file keeps its UUID across versions. A new file's UUID is ``uuid5`` of its identifier,
  so a crashed run that starts over stages and stores under the same keys instead of
  leaving orphan copies under fresh random UUIDs.
* A file present in the registry but absent from the new version is **kept** (APTrust
  keeps it too: a bag version is not a deletion request). We mark it with the work item
  that found it missing (``apt_files.missing_since_work_item``) so it can be reviewed and
  deleted deliberately; the mark is cleared if a later version holds the file again.
* When the object was deleted (state ``D``), nothing of it is in storage any more: every
  file is stored again, still under its old UUID, and the new bag's storage option applies.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from flows.apt.bagfiles import FileType

FILE_NAMESPACE = uuid.UUID("b8a3e1c4-1f55-4c1b-9a8e-6d0f0c3e2a71")
COMPARED_ALGORITHMS = ("sha512", "sha256", "md5")
NOT_PRESERVED_TYPES = frozenset({FileType.MANIFEST, FileType.TAG_MANIFEST, FileType.FETCH})


def is_preserved(path: str, file_type: str | FileType) -> bool:
    return path != "bagit.txt" and FileType(file_type) not in NOT_PRESERVED_TYPES


def new_file_uuid(identifier: str) -> uuid.UUID:
    return uuid.uuid5(FILE_NAMESPACE, identifier)


def change_reason(size: int, checksums: dict[str, str], old_size: int, old_checksums: dict[str, str]) -> str | None:
    """Why the file counts as changed, or None when it is the same file."""
    if size != old_size:
        return f"size {old_size} → {size}"
    compared = False
    for alg in COMPARED_ALGORITHMS:
        old = old_checksums.get(alg)
        new = checksums.get(alg)
        if old and new:
            compared = True
            if old.lower() != new.lower():
                return f"{alg} changed"
    return None if compared else "no comparable checksum in the registry"


@dataclass(frozen=True)
class Decision:
    path: str
    uuid: str | None  # None for files that are not preserved
    preserve: bool
    needs_save: bool
    existing_file_id: int | None
    reason: str  # new | changed: ... | unchanged | not preserved | object was deleted


def decide(path: str, file_type: str, size: int, checksums: dict[str, str], identifier: str,
           existing: dict | None, *, object_deleted: bool = False) -> Decision:
    if not is_preserved(path, file_type):
        return Decision(path, None, False, False, None, "not preserved")
    if existing is None:
        return Decision(path, str(new_file_uuid(identifier)), True, True, None, "new")
    file_uuid = str(existing["uuid"])
    if object_deleted or existing.get("state") == "D":
        return Decision(path, file_uuid, True, True, existing["id"], "object was deleted")
    reason = change_reason(size, checksums, existing["size"], existing.get("checksums") or {})
    if reason:
        return Decision(path, file_uuid, True, True, existing["id"], f"changed: {reason}")
    return Decision(path, file_uuid, True, False, existing["id"], "unchanged")


def absent_paths(existing: dict[str, dict], present: Iterable[str]) -> list[str]:
    """Active registry files the new version does not hold."""
    here = set(present)
    return sorted(p for p, row in existing.items() if p not in here and row.get("state", "A") == "A")
