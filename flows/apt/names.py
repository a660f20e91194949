"""APTrust bag names: tar file name → bag name, institution and multipart part.

APTrust identifies an object as ``<institution>/<bag name>``, where the bag name
is the tar file name minus ``.tar`` and minus a multipart suffix
``.b<N>.of<M>`` (preservation-services ``CleanBagName``). A part of a multipart
bag untars to its part name (``my_bag.b01.of02``, so that parts never untar over
one another), and every part belongs to the one object ``<institution>/my_bag``.
Depositors prefix bag names with their
institution's domain (``virginia.edu.my_bag``); when the caller does not know
the institution (it normally comes from the receiving bucket) we read it off
that prefix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from tasks.errors import UserError

MULTIPART_SUFFIX = re.compile(r"\.b(\d+)\.of(\d+)$")
TAR_SUFFIX = ".tar"

# Last labels of institution domains seen in APTrust bag names. A prefix ends at
# the first of these that is followed by at least one more label.
_DOMAIN_ENDINGS = frozenset(
    {"edu", "org", "com", "net", "gov", "mil", "int", "info", "io", "us", "uk", "ca", "au", "de", "nl", "fr"}
)


@dataclass(frozen=True)
class BagName:
    tar_name: str  # basename as received, e.g. "test.edu.my_bag.b01.of02.tar"
    name: str  # clean bag name, e.g. "test.edu.my_bag": the directory the tar must hold
    institution: str | None  # e.g. "test.edu"
    part: int | None = None  # 1 for ".b01.of02"
    parts: int | None = None  # 2 for ".b01.of02"

    @property
    def is_multipart(self) -> bool:
        return self.part is not None

    @property
    def directory(self) -> str:
        """The directory the tar must untar to: the tar name minus ``.tar`` (multipart suffix kept)."""
        return self.tar_name.removesuffix(TAR_SUFFIX)

    @property
    def identifier(self) -> str:
        """APTrust object identifier ``institution/bag_name`` (bag name alone if unknown)."""
        return f"{self.institution}/{self.name}" if self.institution else self.name

    def file_identifier(self, path_in_bag: str) -> str:
        return f"{self.identifier}/{path_in_bag}"


def clean_bag_name(tar_name: str) -> str:
    """``x.b01.of02.tar`` → ``x``; the directory every part of the bag untars to."""
    base = PurePosixPath(tar_name).name
    if base.endswith(TAR_SUFFIX):
        base = base[: -len(TAR_SUFFIX)]
    return MULTIPART_SUFFIX.sub("", base)


def guess_institution(bag_name: str) -> str | None:
    """``lib.virginia.edu.my_bag`` → ``lib.virginia.edu``; None when no domain prefix."""
    labels = bag_name.split(".")
    for i in range(1, len(labels) - 1):
        if labels[i].lower() in _DOMAIN_ENDINGS and all(labels[: i + 1]):
            return ".".join(labels[: i + 1])
    return None


def parse_bag_name(tar_name: str, institution: str | None = None) -> BagName:
    """Parse a tar file name (a path or S3 key is fine; only the basename counts)."""
    base = PurePosixPath(tar_name.rstrip("/")).name
    stem = base[: -len(TAR_SUFFIX)] if base.endswith(TAR_SUFFIX) else base
    part = parts = None
    match = MULTIPART_SUFFIX.search(stem)
    if match:
        part, parts = int(match.group(1)), int(match.group(2))
        if part < 1 or parts < 1 or part > parts:
            raise UserError(f"Bag name '{base}' has an impossible multipart suffix: part {part} of {parts}")
        stem = stem[: match.start()]
    if not stem or stem in (".", ".."):
        raise UserError(f"'{base}' is not a valid bag name")
    return BagName(
        tar_name=base,
        name=stem,
        institution=institution or guess_institution(stem),
        part=part,
        parts=parts,
    )
