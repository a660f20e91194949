"""BagIt profiles as data: APTrust 2.2, APTrust 2.3 and BTR 1.0.

The JSON files under ``profiles/`` keep the structure of APTrust's own profile
documents (preservation-services / DART), minus DART's form-state fields, so a
new APTrust profile version is a new file, not new code. A bag names its
profile in ``bag-info.txt`` ``BagIt-Profile-Identifier``; no identifier means
the current APTrust profile, as at APTrust.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tasks.errors import UserError

PROFILE_DIR = Path(__file__).with_name("profiles")
PROFILE_FILES = {
    "aptrust-2.2": "aptrust-v2.2.json",
    "aptrust-2.3": "aptrust-v2.3.json",
    "btr-1.0": "btr-v1.0.json",
}
DEFAULT_PROFILE = "aptrust-2.3"


@dataclass(frozen=True)
class TagDef:
    tag_file: str
    tag_name: str
    required: bool
    values: tuple[str, ...]  # empty: any value is legal
    default: str | None
    help: str = ""

    def canonical(self, value: str) -> str | None:
        """The profile's spelling of ``value`` (case-insensitive), or None if illegal."""
        if not self.values:
            return value
        folded = value.strip().lower()
        return next((v for v in self.values if v.lower() == folded), None)

    def is_legal(self, value: str) -> bool:
        return self.canonical(value) is not None


@dataclass(frozen=True)
class Profile:
    key: str  # "aptrust-2.3"
    name: str
    identifier: str  # bagItProfileInfo.bagItProfileIdentifier
    version: str
    accept_bagit_version: tuple[str, ...]
    accept_serialization: tuple[str, ...]
    serialization: str  # required | optional | forbidden
    allow_fetch_txt: bool
    manifests_required: tuple[str, ...]
    manifests_allowed: tuple[str, ...]
    tag_manifests_required: tuple[str, ...]
    tag_manifests_allowed: tuple[str, ...]
    tag_files_allowed: tuple[str, ...]
    tags: tuple[TagDef, ...] = field(repr=False)
    tar_dir_must_match_name: bool = True
    document: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_aptrust(self) -> bool:
        return self.key.startswith("aptrust")

    def tag_def(self, tag_file: str, tag_name: str) -> TagDef | None:
        wanted = tag_name.lower()
        return next((t for t in self.tags if t.tag_file == tag_file and t.tag_name.lower() == wanted), None)


def _from_document(key: str, doc: dict[str, Any]) -> Profile:
    info = doc.get("bagItProfileInfo", {})
    tags = tuple(
        TagDef(
            tag_file=t["tagFile"],
            tag_name=t["tagName"],
            required=bool(t.get("required")),
            values=tuple(t.get("values") or ()),
            default=t.get("defaultValue"),
            help=t.get("help", ""),
        )
        for t in doc.get("tags", [])
    )
    return Profile(
        key=key,
        name=doc.get("name", key),
        identifier=info.get("bagItProfileIdentifier", ""),
        version=info.get("version", ""),
        accept_bagit_version=tuple(doc.get("acceptBagItVersion", ())),
        accept_serialization=tuple(doc.get("acceptSerialization", ())),
        serialization=doc.get("serialization", "optional"),
        allow_fetch_txt=bool(doc.get("allowFetchTxt")),
        manifests_required=tuple(doc.get("manifestsRequired", ())),
        manifests_allowed=tuple(doc.get("manifestsAllowed", ())),
        tag_manifests_required=tuple(doc.get("tagManifestsRequired", ())),
        tag_manifests_allowed=tuple(doc.get("tagManifestsAllowed", ())),
        tag_files_allowed=tuple(doc.get("tagFilesAllowed", ())),
        tags=tags,
        tar_dir_must_match_name=bool(doc.get("tarDirMustMatchName")),
        document=doc,
    )


@cache
def profile_by_key(key: str) -> Profile:
    doc = json.loads((PROFILE_DIR / PROFILE_FILES[key]).read_text())
    return _from_document(key, doc)


def profile_key(identifier: str | None) -> str:
    """Map a BagIt-Profile-Identifier to one of our profiles.

    Exact identifiers first; then the spellings seen in the wild (DART's
    ``aptrust_2.2.json``, the old wiki URL, the BTR repository URL), as APTrust
    itself recognises BTR by ``btr-bagit-profile`` in the identifier.
    """
    ident = (identifier or "").strip()
    if not ident:
        return DEFAULT_PROFILE
    low = ident.lower()
    for key in PROFILE_FILES:
        if low in (key, profile_by_key(key).identifier.lower()):
            return key
    if "btr-bagit-profile" in low or "btr_bagit_profile" in low:
        return "btr-1.0"
    if "aptrust" in low:
        if re.search(r"2[._-]2(?!\d)", low):
            return "aptrust-2.2"
        if re.search(r"2[._-]3(?!\d)", low):
            return "aptrust-2.3"
    raise UserError(
        f"Unknown BagIt-Profile-Identifier '{ident}'. Accepted profiles: "
        + ", ".join(profile_by_key(k).identifier for k in PROFILE_FILES),
        code="unknown_profile",
    )


def load_profile(identifier: str | None) -> Profile:
    """The profile a bag names; empty or None means APTrust 2.3. Unknown → UserError."""
    return profile_by_key(profile_key(identifier))


# DART before 2.0.20 wrote this identifier into BTR bags; APTrust rewrites it to BTR's
# (MetadataGatherer.NormalizeProfileIdentifier).
_BTR_ALIASES = ("btr-1.0", "https://raw.githubusercontent.com/aptrust/dart/master/profiles/btr-v0.1.json")


def judging_profile_key(identifier: str | None) -> str:
    """The profile APTrust judges a bag by: BTR for a BTR identifier, else the current APTrust one.

    APTrust validates against its default profile whatever a bag declares
    (``IngestObject.BagItProfileFormat``: BTR only when the identifier contains
    ``/btr_bagit_profile`` or ``/btr-bagit-profile``), so a bag that still names
    APTrust 2.2, an old wiki URL, or a custom identifier is judged by 2.3, and a
    valid ``Storage-Option: Wasabi-TX`` passes whatever version the bag names.
    """
    low = (identifier or "").strip().lower()
    if any(mark in low for mark in ("/btr_bagit_profile", "/btr-bagit-profile")) or low in _BTR_ALIASES:
        return "btr-1.0"
    return DEFAULT_PROFILE


def judging_profile(identifier: str | None) -> Profile:
    return profile_by_key(judging_profile_key(identifier))
