"""NRAO product vocabulary: the enums, names and identifiers the Ingest Envoy speaks.

The string values are the ones the Workspaces ingestion manifest and the NRAO
archive use, so a manifest we write is readable by the archive's own ingest;
keeping them as enums means a typo fails at import time instead of in the archive.
"""
from __future__ import annotations

import os
import re
import uuid
from datetime import datetime, timezone
from enum import Enum
from pathlib import PurePosixPath

from tasks.errors import UserError

MANIFEST_FILENAME = "ingestion-manifest.json"
WEBLOG_FILENAME = "weblog.tgz"
AUX_IMAGE_METADATA = "aux_image_metadata.json"
PIPELINE_ARTIFACTS_PREFIX = "pipeline_artifacts_"
INGESTION_ARTIFACTS_PREFIX = "ingestion_artifacts_"
TAR_SUFFIX = ".tar"

# The one knob for artifact names. ``{ms}`` is milliseconds (strftime has no such
# directive). Workspaces has written both ``2021_08_04T01_57_08.564`` (this default)
# and ``2021_05_21_T10_17_19.275``; set NRAO_ARTIFACT_TIMESTAMP_FORMAT to
# ``%Y_%m_%d_T%H_%M_%S.{ms}`` to produce the other.
DEFAULT_TIMESTAMP_FORMAT = "%Y_%m_%dT%H_%M_%S.{ms}"
ARTIFACT_TIMESTAMP_FORMAT = os.environ.get("NRAO_ARTIFACT_TIMESTAMP_FORMAT", DEFAULT_TIMESTAMP_FORMAT)

# Matches both spellings, so golden files normalise whichever one is configured.
TIMESTAMP_PATTERN = re.compile(r"\d{4}_\d{2}_\d{2}_?T\d{2}_\d{2}_\d{2}(?:\.\d{3})?")


class IngestionType(str, Enum):
    """What the envoy was asked to ingest (its four command-line modes)."""

    CALIBRATION = "calibration"
    IMAGE = "image"
    OBSERVATION = "observation"
    SECI = "seci"


class Telescope(str, Enum):
    EVLA = "EVLA"
    VLBA = "VLBA"
    GBT = "GBT"
    ALMA = "ALMA"


class ScienceProductType(str, Enum):
    EXECUTION_BLOCK = "execution_block"
    CALIBRATION = "calibration"
    IMAGE = "image"


class AncillaryProductType(str, Enum):
    # group level
    PIPELINE_WEBLOG = "pipeline_weblog"
    PIPELINE_ARTIFACTS = "pipeline_artifacts"
    INGESTION_ARTIFACTS = "ingestion_artifacts"
    # per image
    PRIMARY_BEAM = "primary_beam"
    CLEAN_MASK = "clean_mask"
    SPECTRAL_INDEX = "spectral_index"
    SPECTRAL_INDEX_ERROR = "spectral_index_error"
    RMS_IMAGE = "rms_image"
    THUMBNAIL_IMAGE = "thumbnail_image"
    # per execution block
    SDM_TABLE = "sdm_table"
    BDF = "bdf"


SCIENCE_TYPE_FOR = {
    IngestionType.CALIBRATION: ScienceProductType.CALIBRATION,
    IngestionType.IMAGE: ScienceProductType.IMAGE,
    IngestionType.SECI: ScienceProductType.IMAGE,
    IngestionType.OBSERVATION: ScienceProductType.EXECUTION_BLOCK,
}

# What the input group points at: an EB for calibrations, a calibration for images.
INPUT_TYPE_FOR = {
    IngestionType.CALIBRATION: ScienceProductType.EXECUTION_BLOCK,
    IngestionType.IMAGE: ScienceProductType.CALIBRATION,
    IngestionType.SECI: ScienceProductType.CALIBRATION,
    IngestionType.OBSERVATION: None,
}


def format_timestamp(when: datetime | None = None, fmt: str | None = None) -> str:
    """Artifact timestamp in UTC; ``{ms}`` becomes the 3-digit millisecond."""
    when = when or datetime.now(timezone.utc)
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    pattern = (fmt or ARTIFACT_TIMESTAMP_FORMAT).replace("{ms}", f"{when.microsecond // 1000:03d}")
    return when.strftime(pattern)


def pipeline_artifacts_name(timestamp: str) -> str:
    return f"{PIPELINE_ARTIFACTS_PREFIX}{timestamp}{TAR_SUFFIX}"


def ingestion_artifacts_name(timestamp: str) -> str:
    return f"{INGESTION_ARTIFACTS_PREFIX}{timestamp}{TAR_SUFFIX}"


def normalize_timestamps(text: str, placeholder: str = "<TIMESTAMP>") -> str:
    """Replace every artifact timestamp so two runs compare byte for byte."""
    return TIMESTAMP_PATTERN.sub(placeholder, text)


# ---------------------------------------------------------------- locators and NGAS ids

# BDFs are named by their own uid with ':' and '/' already replaced (uid____evla_bdf_1600000000000).
BDF_NAME_RE = re.compile(r"^uid_{2,4}[A-Za-z0-9]+_bdf_[A-Za-z0-9_.+-]+$")
_LOCATOR_RE = re.compile(r"^uid://[A-Za-z0-9._-]+(/[A-Za-z0-9._+-]+)+$")
_COMPOUND_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".fits.gz", ".fits.fz", ".ms.tgz")
_SAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._+-]")


def check_locator(locator: str) -> str:
    """A science product locator looks like ``uid://evla/calibration/<uuid>``."""
    if not isinstance(locator, str) or not _LOCATOR_RE.match(locator):
        raise UserError(f"not a product locator: {locator!r} (expected uid://<telescope>/<kind>/<id>)")
    return locator


def new_locator(telescope: Telescope | str, kind: str) -> str:
    """Mint a locator for a product the archive does not know yet (ancillaries, new images)."""
    scope = (telescope.value if isinstance(telescope, Telescope) else str(telescope)).lower()
    return check_locator(f"uid://{scope}/{kind}/{uuid.uuid4()}")


def file_extension(filename: str) -> str:
    """The extension NGAS ids keep: compound ones (``.tar.gz``) whole, else the last suffix."""
    name = PurePosixPath(filename).name
    lower = name.lower()
    for compound in _COMPOUND_SUFFIXES:
        if lower.endswith(compound) and len(name) > len(compound):
            return name[-len(compound):]
    suffix = PurePosixPath(name).suffix
    return suffix if 1 < len(suffix) <= 16 else ""


def ngas_file_id(locator: str, filename: str = "", *, part: str | None = None) -> str:
    """NGAS file id: the locator with ``:`` and ``/`` turned into ``_``, plus the file's extension.

    ``uid://evla/calibration/ab-12`` + ``x.tar`` → ``uid___evla_calibration_ab-12.tar`` (the
    same rule that turns ALMA's ``uid://A002/X1/X2`` into ``uid___A002_X1_X2``). ``part``
    disambiguates several files of one product (SDM tables of one execution block).
    """
    check_locator(locator)
    base = locator.replace(":", "_").replace("/", "_")
    if part:
        base = f"{base}_{_SAFE_ID_CHARS.sub('_', part)}"
    return base + file_extension(filename)


_MIME_TYPES = {
    ".fits": "image/x-fits",
    ".fits.gz": "application/x-gfits",
    ".tar": "application/x-tar",
    ".tgz": "application/x-gtar",
    ".tar.gz": "application/x-gtar",
    ".json": "application/json",
    ".xml": "text/xml",
    ".png": "image/png",
    ".txt": "text/plain",
    ".log": "text/plain",
}


def mime_type_for(filename: str) -> str:
    """Content-Type for an NGAS push; NGAS maps it to a storage stream and DAPI."""
    return _MIME_TYPES.get(file_extension(filename).lower(), "application/octet-stream")
