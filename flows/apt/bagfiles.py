"""What each path in a bag is, and how its small text files read.

Classification follows APTrust preservation-services (``IngestFile.FileType``):
top-level ``manifest-<alg>.txt`` and ``tagmanifest-<alg>.txt`` are manifests,
``fetch.txt`` is fetch, everything under ``data/`` is payload, and anything else
is a tag file. Tag files use RFC 2822-style ``Name: value`` lines with folded
continuation lines (BagIt, RFC 8493 §2.2.2); names may repeat, so we keep a list.
"""
from __future__ import annotations

import re
from enum import StrEnum

from tasks.errors import UserError

PARSABLE_TAG_FILES = ("bagit.txt", "bag-info.txt", "aptrust-info.txt")
_MANIFEST = re.compile(r"^manifest-([^./]+)\.txt$")
_TAG_MANIFEST = re.compile(r"^tagmanifest-([^./]+)\.txt$")
_HEX = re.compile(r"[0-9A-Fa-f]+")
# Names a Mac filesystem wrote after escaping a control character (APTrust ContainsEscapedControl).
_ESCAPED_CONTROL = re.compile(r"\\[Uu]00[0189][0-9A-Fa-f]|\\[Uu]007[Ff]")
# C0, DEL, C1 (Go's unicode.IsControl), NBSP, and bytes that were not UTF-8 (surrogateescape).
_ILLEGAL = re.compile("[\x00-\x1f\x7f-\xa0\udc80-\udcff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_UNDECODABLE = re.compile("[\udc80-\udcff]")


class FileType(StrEnum):
    PAYLOAD = "payload_file"
    MANIFEST = "manifest"
    TAG_MANIFEST = "tag_manifest"
    FETCH = "fetch.txt"
    TAG = "tag_file"


def file_type(path: str) -> FileType:
    if _MANIFEST.match(path):
        return FileType.MANIFEST
    if _TAG_MANIFEST.match(path):
        return FileType.TAG_MANIFEST
    if path == "fetch.txt":
        return FileType.FETCH
    if path.startswith("data/"):
        return FileType.PAYLOAD
    return FileType.TAG


def manifest_algorithm(path: str) -> str | None:
    """``manifest-sha256.txt`` / ``tagmanifest-sha256.txt`` → ``sha256``."""
    match = _MANIFEST.match(path) or _TAG_MANIFEST.match(path)
    return match.group(1).lower() if match else None


def is_metadata_file(path: str) -> bool:
    """Files the scanner keeps in memory: manifests, tag manifests and parsable tag files."""
    return path in PARSABLE_TAG_FILES or file_type(path) in (FileType.MANIFEST, FileType.TAG_MANIFEST)


def has_illegal_char(name: str) -> bool:
    """Control characters, NBSP or undecodable bytes anywhere in ``name``."""
    return _ILLEGAL.search(name) is not None


def replace_illegal(name: str, replacement: str = "_") -> str:
    return _ILLEGAL.sub(replacement, name)


def name_error(path: str) -> str | None:
    """The APTrust message for an unstorable file name, or None."""
    if not has_illegal_char(path) and "\\" not in path:
        return None  # the common case, decided by one regex scan
    if _UNDECODABLE.search(path):
        return f"File name '{display_name(path)}' is not valid UTF-8"
    if _CONTROL.search(path) or _ESCAPED_CONTROL.search(path):
        return f"File name '{display_name(path)}' contains one or more illegal control characters"
    if "\u00a0" in path:
        return f"File name '{display_name(path)}' contains a non-breaking space (U+00A0)"
    return None


def display_name(path: str) -> str:
    """Render illegal characters as ``\\u007f`` so a message never carries raw control bytes."""
    def escape(match: re.Match[str]) -> str:
        o = ord(match.group())
        return f"\\x{o - 0xDC00:02x}" if o >= 0xDC80 else f"\\u{o:04x}"

    return _ILLEGAL.sub(escape, path)


def decode_text(data: bytes, name: str) -> str:
    """Tag files and manifests are UTF-8 (the profiles require it); a BOM is tolerated."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{name} is not valid UTF-8 (byte {exc.start})") from exc
    return text[1:] if text.startswith("\ufeff") else text


def _lines(text: str) -> list[str]:
    """Split on LF (and CRLF) only: str.splitlines would also split names at U+2028, U+0085, U+001C."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def parse_tag_file(data: bytes, name: str) -> list[tuple[str, str]]:
    """``Name: value`` pairs in file order; folded lines are joined with a space."""
    tags: list[list[str]] = []
    current: list[str] | None = None
    for number, line in enumerate(_lines(decode_text(data, name)), start=1):
        if not line.strip():
            continue
        if line[0] in " \t" and current is not None:
            current[1] += " " + line.strip()
            continue
        if ":" not in line:
            raise UserError(f"{name} line {number} is not a 'Name: value' tag: {line.strip()[:120]!r}")
        tag_name, value = line.split(":", 1)
        current = [tag_name.strip(), value.strip()]
        tags.append(current)
    return [(n, v) for n, v in tags]


def parse_manifest(data: bytes, name: str) -> dict[str, str]:
    """{path: digest}, read as APTrust reads manifests (``bagit.ParseManifest``).

    The first whitespace-delimited token is the digest and the rest of the line the
    path, so a line with a damaged digest is not a parse error but an entry whose
    digest will not match: the validator reports it with the bag's other errors, in
    APTrust's words. Hex digests are lower-cased (BagIt digests are case-insensitive);
    anything else is kept verbatim for the message.
    """
    entries: dict[str, str] = {}
    for line in _lines(decode_text(data, name)):
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        digest = parts[0]
        path = parts[1].strip().lstrip("*") if len(parts) > 1 else ""
        path = path.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")
        if _HEX.fullmatch(digest):
            digest = digest.lower()
        while path.startswith("./"):
            path = path[2:]
        entries[path] = digest
    return entries
