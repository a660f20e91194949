"""The ingestion manifest (``ingestion-manifest.json``), the ingestion artifacts tar, and the
list of files to push to NGAS.

The manifest is what the archive's own ingest reads, so its shape follows the
Workspaces ``IngestionManifest``: ``parameters``, ``input_group`` and
``output_group``. Output is deterministic (sorted keys, sorted products, fixed
indent, trailing newline) so that two runs over the same source differ only in
the artifact timestamps and the staging path, which golden tests normalise.
"""
from __future__ import annotations

import calendar
import json
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.nrao.collectors import BDF_DIR, StagedAncillary, StagedProduct, StagedScience
from flows.nrao.products import (
    BDF_NAME_RE,
    INPUT_TYPE_FOR,
    MANIFEST_FILENAME,
    AncillaryProductType,
    IngestionType,
    ScienceProductType,
    Telescope,
    check_locator,
    ingestion_artifacts_name,
    mime_type_for,
    new_locator,
    ngas_file_id,
)
from tasks.errors import UserError
from tasks.staging import StagingArea
from tasks.validation import validate_json

SCHEMA_PATH = Path(__file__).with_name("schemas") / "ingestion-manifest.schema.json"
JSON_INDENT = 4
LOCATOR_KIND = {ScienceProductType.EXECUTION_BLOCK: "execblock"}

# Group-level ancillaries are listed in this order (then by file name).
_GROUP_ORDER = {
    AncillaryProductType.PIPELINE_WEBLOG: 0,
    AncillaryProductType.PIPELINE_ARTIFACTS: 1,
    AncillaryProductType.INGESTION_ARTIFACTS: 2,
}


@dataclass(frozen=True)
class ManifestParameters:
    telescope: Telescope
    ingestion_path: str
    reingest: bool = False
    ngas_ingest: bool = True
    calibrate: bool = False
    additional_metadata: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "telescope": self.telescope.value,
            "reingest": self.reingest,
            "ngas_ingest": self.ngas_ingest,
            "calibrate": self.calibrate,
            "ingestion_path": self.ingestion_path,
        }
        if self.additional_metadata:
            doc["additional_metadata"] = self.additional_metadata
        return doc


@dataclass(frozen=True)
class IngestionManifest:
    parameters: ManifestParameters
    input_locators: tuple[str, ...]
    science_products: tuple[StagedScience, ...]
    ancillary_products: tuple[StagedAncillary, ...]
    ingestion_type: IngestionType | None = field(default=None, compare=False)

    @property
    def ingestion_artifacts(self) -> str:
        for a in self.ancillary_products:
            if a.type is AncillaryProductType.INGESTION_ARTIFACTS:
                return a.filename
        raise ValueError("manifest lists no ingestion artifacts")

    def to_json(self) -> dict[str, Any]:
        science = []
        for sp in sorted(self.science_products, key=lambda s: s.filename):
            entry: dict[str, Any] = {"type": sp.type.value, "filename": sp.filename}
            if sp.ancillary_products:
                entry["ancillary_products"] = [_ancillary_json(a) for a in
                                               sorted(sp.ancillary_products, key=lambda a: (a.type.value, a.filename))]
            science.append(entry)
        group = sorted(self.ancillary_products, key=lambda a: (_GROUP_ORDER.get(a.type, 9), a.type.value, a.filename))
        return {
            "parameters": self.parameters.to_json(),
            "input_group": {"science_products": [{"locator": loc} for loc in self.input_locators]},
            "output_group": {
                "science_products": science,
                "ancillary_products": [_ancillary_json(a) for a in group],
            },
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=JSON_INDENT, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, doc: Any) -> "IngestionManifest":
        """Read a manifest back (ours or the archive's); shape errors are UserErrors."""
        validate_manifest(doc)
        p = doc["parameters"]
        params = ManifestParameters(
            telescope=Telescope(p["telescope"]), ingestion_path=p["ingestion_path"], reingest=p["reingest"],
            ngas_ingest=p["ngas_ingest"], calibrate=p["calibrate"], additional_metadata=p.get("additional_metadata"))
        science = tuple(
            StagedScience(ScienceProductType(sp["type"]), sp["filename"],
                          tuple(StagedAncillary(AncillaryProductType(a["type"]), a["filename"])
                                for a in sp.get("ancillary_products", [])))
            for sp in doc["output_group"]["science_products"])
        group = tuple(StagedAncillary(AncillaryProductType(a["type"]), a["filename"])
                      for a in doc["output_group"]["ancillary_products"])
        inputs = tuple(sp["locator"] for sp in doc["input_group"]["science_products"])
        return cls(params, inputs, science, group)


def _ancillary_json(a: StagedAncillary) -> dict[str, str]:
    return {"type": a.type.value, "filename": a.filename}


def validate_manifest(doc: Any) -> Any:
    return validate_json(doc, SCHEMA_PATH)


def build_manifest(staged: StagedProduct, *, telescope: Telescope | str = Telescope.EVLA,
                   input_locator: str | None = None, reingest: bool = False, ngas_ingest: bool = True,
                   calibrate: bool = False) -> IngestionManifest:
    """The manifest for a staged product; the input locator is required where the type has an input."""
    kind = staged.ingestion_type
    needs_input = INPUT_TYPE_FOR[kind]
    if needs_input is not None and not input_locator:
        raise UserError(f"{kind.value} ingestion needs the input {needs_input.value} locator")
    if needs_input is None and input_locator:
        raise UserError(f"{kind.value} ingestion takes no input locator")
    inputs = (check_locator(input_locator),) if input_locator else ()
    params = ManifestParameters(
        telescope=Telescope(telescope), ingestion_path=str(staged.staging_dir), reingest=reingest,
        ngas_ingest=ngas_ingest, calibrate=calibrate, additional_metadata=staged.additional_metadata)
    group = tuple(staged.ancillary_products) + (
        StagedAncillary(AncillaryProductType.INGESTION_ARTIFACTS, ingestion_artifacts_name(staged.timestamp)),)
    return IngestionManifest(params, inputs, tuple(staged.science_products), group, kind)


def write_manifest(staged: StagedProduct, manifest: IngestionManifest) -> Path:
    """``ingestion-manifest.json`` in staging, validated, written atomically."""
    text = manifest.dumps()
    validate_manifest(json.loads(text))
    area = StagingArea(staged.staging_dir)
    with area.atomic_writer(MANIFEST_FILENAME) as fh:
        fh.write(text.encode("utf-8"))
    return staged.staging_dir / MANIFEST_FILENAME


def write_ingestion_artifacts(staged: StagedProduct, manifest: IngestionManifest) -> Path:
    """``ingestion_artifacts_<timestamp>.tar``: the manifest plus any additional metadata file.

    Members carry the artifact timestamp as their mtime, not the moment they were written, so
    one setup time always gives the same bytes (a re-run can reuse the copy NGAS holds).
    """
    area = StagingArea(staged.staging_dir)
    name = manifest.ingestion_artifacts
    members = [MANIFEST_FILENAME] + ([staged.additional_metadata] if staged.additional_metadata else [])
    with area.atomic_writer(name) as fh, tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            path = area.path(member)
            if not path.is_file():
                raise FileNotFoundError(f"{member} is not in staging; write the manifest first")
            info = tar.gettarinfo(str(path), arcname=member)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = timestamp_epoch(staged.timestamp)
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return staged.staging_dir / name


_STAMP_RE = re.compile(r"(\d{4})_(\d{2})_(\d{2})_?T(\d{2})_(\d{2})_(\d{2})")


def timestamp_epoch(timestamp: str) -> int:
    """Seconds since the epoch (UTC) of an artifact timestamp in either spelling; 0 if it has none."""
    m = _STAMP_RE.search(timestamp)
    if not m:
        return 0
    return int(calendar.timegm(tuple(int(g) for g in m.groups()) + (0, 0, 0)))


def finish_setup(staged: StagedProduct, **params: Any) -> IngestionManifest:
    """Build and write the manifest, then the ingestion artifacts tar (setup's last step)."""
    manifest = build_manifest(staged, **params)
    write_manifest(staged, manifest)
    write_ingestion_artifacts(staged, manifest)
    return manifest


# ---------------------------------------------------------------- what to push to NGAS


@dataclass(frozen=True)
class ArchiveItem:
    name: str          # relative to the staging directory
    path: Path
    file_id: str       # NGAS file id
    locator: str       # the science or ancillary product this file belongs to
    product_type: str  # ScienceProductType / AncillaryProductType value
    mime_type: str


def archive_plan(staged: StagedProduct, manifest: IngestionManifest, *,
                 locators: Mapping[str, str] | None = None,
                 mint: Callable[[Telescope, str], str] = new_locator) -> list[ArchiveItem]:
    """Every staged file with its NGAS file id, science products first, ingestion artifacts last.

    Each science and ancillary product has its own locator (``locators`` maps a
    staged name to a known one, e.g. from a previous attempt; others are minted),
    and the file id is derived from it. The files of an execution block share the
    EB's locator and are told apart by their table/BDF name.
    """
    known = dict(locators or {})
    telescope = manifest.parameters.telescope
    items: list[ArchiveItem] = []

    def locator_for(name: str, kind: str) -> str:
        if name not in known:
            known[name] = mint(telescope, kind)
        return known[name]

    def add(name: str, locator: str, ptype: str, part: str | None = None) -> None:
        path = staged.staging_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{name} is not in staging")
        items.append(ArchiveItem(name, path, ngas_file_id(locator, name, part=part), locator, ptype,
                                 mime_type_for(name)))

    def add_member(member: str, product: str, locator: str) -> None:
        """SDM tables: ``<EB id>_<Table>.xml``; BDFs keep their own uid-derived name."""
        rel = member[len(product) + 1:] if member.startswith(product + "/") else member
        head, _, base = rel.rpartition("/")
        if head == BDF_DIR:
            path = staged.staging_dir / member
            if not BDF_NAME_RE.match(base):
                raise UserError(f"BDF {base!r} is not named by its uid (uid___<telescope>_bdf_<n>)")
            items.append(ArchiveItem(member, path, base, locator, AncillaryProductType.BDF.value,
                                     "multipart/related"))
        else:
            add(member, locator, AncillaryProductType.SDM_TABLE.value, part=rel.rsplit(".", 1)[0].replace("/", "_"))

    staged_members = {sp.filename: sp.members for sp in staged.science_products}
    for sp in manifest.science_products:
        loc = locator_for(sp.filename, LOCATOR_KIND.get(sp.type, sp.type.value))
        members = sp.members or staged_members.get(sp.filename, ())
        if members:
            for member in members:
                add_member(member, sp.filename, loc)
        else:
            add(sp.filename, loc, sp.type.value)
        for a in sp.ancillary_products:
            add(a.filename, locator_for(a.filename, "ancillary_product"), a.type.value)
    for a in manifest.ancillary_products:
        add(a.filename, locator_for(a.filename, "ancillary_product"), a.type.value)
    return items
