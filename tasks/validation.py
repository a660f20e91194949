"""Shared validators for what submitters send: JSON messages and tar members.

Errors are UserErrors worded for the submitter: they name the field or member
and say what is wrong with it.
"""
from __future__ import annotations

import json
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.errors import UserError
from tasks.staging import check_relative_name

MAX_NAME_BYTES = 1024


@lru_cache(maxsize=None)
def load_schema(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def parse_json_message(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"message is not valid JSON: {exc}") from exc


def validate_json(instance: Any, schema: dict[str, Any] | str | Path) -> Any:
    """Validate against a JSON Schema; the error lists every violation with its JSON path."""
    import jsonschema

    if not isinstance(schema, dict):
        schema = load_schema(str(schema))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        parts = []
        for err in errors[:10]:
            where = "/".join(str(p) for p in err.absolute_path) or "(message)"
            parts.append(f"{where}: {err.message}")
        raise UserError("invalid message: " + "; ".join(parts))
    return instance


def check_tar_member(member: tarfile.TarInfo, *, max_size: int | None = None,
                     max_name_bytes: int = MAX_NAME_BYTES) -> str:
    """Accept only regular files and directories with safe relative names.

    Returns the normalised name (no leading ``./``, no trailing ``/``).
    """
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    check_relative_name(name, what=f"tar member {member.name!r}", max_length=max_name_bytes)
    if member.issym() or member.islnk():
        raise UserError(f"tar member {member.name!r} is a link (to {member.linkname!r}); links are not allowed")
    if not (member.isreg() or member.isdir()):
        raise UserError(f"tar member {member.name!r} is not a regular file or directory")
    if max_size is not None and member.size > max_size:
        raise UserError(f"tar member {member.name!r} is {member.size} bytes, over the limit of {max_size}")
    return name
