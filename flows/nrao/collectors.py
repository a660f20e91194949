"""Product staging: gather what one CASA run produced into a per-request staging directory.

This replaces the Workspaces collector shell scripts (calibration-table-collector.sh,
image-product-collector.sh). Every path is confined under its root, tars are written
as a stream (memory does not grow with the data) to a temporary name and renamed
only when complete, and anything surprising in the source is a UserError that names
the file, because the submitter has to fix the source, not us. The exact rules for
each product type are in docs/nrao.md.
"""
from __future__ import annotations

import contextlib
import gzip as gzip_format
import json
import os
import re
import shutil
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from pathlib import Path

from flows.nrao.products import (
    AUX_IMAGE_METADATA,
    BDF_NAME_RE,
    WEBLOG_FILENAME,
    AncillaryProductType,
    IngestionType,
    ScienceProductType,
    format_timestamp,
    pipeline_artifacts_name,
)
from tasks.checksum import BLOCK_SIZE
from tasks.errors import UserError
from tasks.staging import StagingArea, check_relative_name, confine

PRODUCTS_DIR = "products"
WORKING_DIR = "working"
WEBLOG_DIR_RE = re.compile(r"^pipeline-\d{8}T\d{6}")
PIPELINE_ARTIFACT_PATTERNS = ("casa_pipescript.py", "*.pprequest.xml", "casa_commands.log", "pipeline_manifest.xml")
SDM_MARKER = "ASDM.xml"
BDF_DIR = "ASDMBinary"


@dataclass(frozen=True)
class StagedAncillary:
    type: AncillaryProductType
    filename: str  # relative to the staging directory


@dataclass(frozen=True)
class StagedScience:
    type: ScienceProductType
    filename: str  # a file, or for an execution block the SDM directory
    ancillary_products: tuple[StagedAncillary, ...] = ()
    members: tuple[str, ...] = ()  # files of a directory product (SDM tables, BDFs)


@dataclass
class StagedProduct:
    """Everything one ingestion will send to NGAS, by name relative to ``staging_dir``."""

    ingestion_type: IngestionType
    staging_dir: Path
    timestamp: str
    science_products: list[StagedScience]
    ancillary_products: list[StagedAncillary] = field(default_factory=list)
    additional_metadata: str | None = None

    def files(self) -> list[str]:
        """Every staged file to archive, science products first (ingestion artifacts come later)."""
        out: list[str] = []
        for sp in self.science_products:
            out.extend(sp.members or (sp.filename,))
            out.extend(a.filename for a in sp.ancillary_products)
        out.extend(a.filename for a in self.ancillary_products)
        return out


# ---------------------------------------------------------------- entry points


def collect_calibration(source_root: str | Path, source: str, staging_root: str | Path, request_id: str, *,
                        product_name: str | None = None, now: datetime | None = None) -> StagedProduct:
    """Calibration: one tar of all calibration tables, plus the newest weblog re-tarred as weblog.tgz."""
    src = _source_dir(source_root, source)
    area, staging_dir = _fresh_staging(staging_root, request_id, src)
    products = _required_subdir(src, PRODUCTS_DIR)
    weblog = _newest_weblog(src)
    tables = [e for e in _list_dir(products) if not _is_weblog(e)]
    if not tables:
        raise UserError(f"no calibration tables in {source}/{PRODUCTS_DIR} (only weblogs, or nothing)")
    tar_name = f"{_product_name(product_name or src.name)}.tar"
    _write_tar(area, tar_name, src, [(t, t.name) for t in tables])
    ancillaries = [_stage_weblog(area, src, weblog)]
    science = [StagedScience(ScienceProductType.CALIBRATION, tar_name)]
    return StagedProduct(IngestionType.CALIBRATION, staging_dir, format_timestamp(now), science, ancillaries)


def collect_image(source_root: str | Path, source: str, staging_root: str | Path, request_id: str, *,
                  now: datetime | None = None, link: bool = False) -> StagedProduct:
    """Image: the FITS images (each with its own ancillaries), a new weblog tar, the pipeline
    artifacts tar and the required aux_image_metadata.json."""
    return _collect_images(IngestionType.IMAGE, IMAGE_RULES, source_root, source, staging_root, request_id,
                           now=now, link=link)


def collect_seci(source_root: str | Path, source: str, staging_root: str | Path, request_id: str, *,
                 now: datetime | None = None, link: bool = False) -> StagedProduct:
    """VLASS SECI: like image, with the VLASS single-epoch naming (``*.image.pbcor.tt0.subim.fits``)."""
    return _collect_images(IngestionType.SECI, SECI_RULES, source_root, source, staging_root, request_id,
                           now=now, link=link)


def collect_observation(source_root: str | Path, source: str, staging_root: str | Path, request_id: str, *,
                        now: datetime | None = None, link: bool = True) -> StagedProduct:
    """Observation: an SDM directory (ASDM.xml + tables) and its BDFs, staged file by file.

    BDFs can be many GB, so by default they are hard-linked into staging when the
    filesystem allows it (falling back to a streamed copy).
    """
    src = _source_dir(source_root, source)
    if not (src / SDM_MARKER).is_file():
        raise UserError(f"{source} is not an SDM: {SDM_MARKER} is missing")
    area, staging_dir = _fresh_staging(staging_root, request_id, src)
    sdm_name = _product_name(src.name)
    members: list[str] = []
    for entry in _list_dir(src):
        if entry.name == BDF_DIR and entry.is_dir():
            continue
        _require_regular(entry, src)
        members.append(_stage_copy(area, entry, f"{sdm_name}/{entry.name}", link))
    bdf_dir = src / BDF_DIR
    if bdf_dir.is_dir():
        for entry in _list_dir(bdf_dir, allow_empty=True):
            _require_regular(entry, src)
            if not BDF_NAME_RE.match(entry.name):
                raise UserError(f"{BDF_DIR}/{entry.name} is not named like a BDF (uid___<telescope>_bdf_<id>)")
            members.append(_stage_copy(area, entry, f"{sdm_name}/{BDF_DIR}/{entry.name}", link))
    science = [StagedScience(ScienceProductType.EXECUTION_BLOCK, sdm_name, members=tuple(members))]
    return StagedProduct(IngestionType.OBSERVATION, staging_dir, format_timestamp(now), science)


COLLECTORS = {
    IngestionType.CALIBRATION: collect_calibration,
    IngestionType.IMAGE: collect_image,
    IngestionType.SECI: collect_seci,
    IngestionType.OBSERVATION: collect_observation,
}


# ---------------------------------------------------------------- image naming rules


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    role: AncillaryProductType | None  # None = the science image itself


def _rules(*pairs: tuple[str, AncillaryProductType | None]) -> tuple[_Rule, ...]:
    return tuple(_Rule(re.compile(p, re.IGNORECASE), role) for p, role in pairs)


# First match wins; group 1 is the stem that ties an ancillary to its image.
IMAGE_RULES = _rules(
    (r"^(.+)\.alpha\.error\.fits$", AncillaryProductType.SPECTRAL_INDEX_ERROR),
    (r"^(.+)\.alpha\.fits$", AncillaryProductType.SPECTRAL_INDEX),
    (r"^(.+)\.pb(?:\.tt0)?\.fits$", AncillaryProductType.PRIMARY_BEAM),
    (r"^(.+)\.mask\.fits$", AncillaryProductType.CLEAN_MASK),
    (r"^(.+?)(?:\.pbcor(?:\.tt0)?)?\.png$", AncillaryProductType.THUMBNAIL_IMAGE),
    (r"^(.+?)(?:\.pbcor(?:\.tt0)?)?\.fits$", None),
)
SECI_RULES = _rules(
    (r"^(.+)\.image\.pbcor\.tt0\.rms\.subim\.fits$", AncillaryProductType.RMS_IMAGE),
    (r"^(.+)\.pb\.tt0\.subim\.fits$", AncillaryProductType.PRIMARY_BEAM),
    (r"^(.+)\.image\.pbcor\.tt0\.subim\.png$", AncillaryProductType.THUMBNAIL_IMAGE),
    (r"^(.+)\.image\.pbcor\.tt0\.subim\.fits$", None),
)


ImageGroup = tuple[str, list[tuple[AncillaryProductType, str]]]


def classify_images(names: Iterable[str], rules: tuple[_Rule, ...]) -> list[ImageGroup]:
    """Group image file names into (science image, [(ancillary type, name)]) by shared stem.

    Files no rule knows are ignored only if they are not FITS/PNG; an unknown FITS,
    or an ancillary without its image, is a UserError because silently dropping or
    mis-attaching a product is worse than stopping.
    """
    primaries: dict[str, str] = {}
    ancillaries: list[tuple[str, AncillaryProductType, str]] = []
    for name in sorted(names):
        for rule in rules:
            m = rule.pattern.match(name)
            if m:
                if rule.role is None:
                    if m.group(1) in primaries:
                        raise UserError(f"images {primaries[m.group(1)]!r} and {name!r} share the stem {m.group(1)!r}")
                    primaries[m.group(1)] = name
                else:
                    ancillaries.append((m.group(1), rule.role, name))
                break
        else:
            if name.lower().endswith((".fits", ".png")):
                raise UserError(f"{name!r} is not a recognised image product name")
    grouped: dict[str, list[tuple[AncillaryProductType, str]]] = {p: [] for p in primaries.values()}
    for stem, role, name in ancillaries:
        if stem not in primaries:
            raise UserError(f"{role.value} {name!r} has no matching image (expected one with stem {stem!r})")
        grouped[primaries[stem]].append((role, name))
    return [(image, sorted(grouped[image], key=lambda x: (x[0].value, x[1]))) for image in sorted(grouped)]


def _collect_images(kind: IngestionType, rules: tuple[_Rule, ...], source_root: str | Path, source: str,
                    staging_root: str | Path, request_id: str, *, now: datetime | None, link: bool) -> StagedProduct:
    src = _source_dir(source_root, source)
    area, staging_dir = _fresh_staging(staging_root, request_id, src)
    products = _required_subdir(src, PRODUCTS_DIR)
    aux = _find_aux_metadata(src, kind)
    weblog = _newest_weblog(src)
    candidates = {e.name: e for e in _list_dir(products) if e.name.lower().endswith((".fits", ".png"))}
    groups = classify_images(candidates, rules)
    if not groups:
        raise UserError(f"no image products (*.fits) in {source}/{PRODUCTS_DIR}")
    timestamp = format_timestamp(now)

    science = []
    for image, ancillaries in groups:
        _require_regular(candidates[image], src)
        _stage_copy(area, candidates[image], image, link)
        staged_anc = []
        for role, name in ancillaries:
            _require_regular(candidates[name], src)
            _stage_copy(area, candidates[name], name, link)
            staged_anc.append(StagedAncillary(role, name))
        science.append(StagedScience(ScienceProductType.IMAGE, image, tuple(staged_anc)))

    group = [_stage_weblog(area, src, weblog)]
    artifacts = _pipeline_artifacts(src)
    if artifacts:
        name = pipeline_artifacts_name(timestamp)
        _write_tar(area, name, src, [(p, p.name) for p in artifacts])
        group.append(StagedAncillary(AncillaryProductType.PIPELINE_ARTIFACTS, name))
    _stage_copy(area, aux, AUX_IMAGE_METADATA, link=False)
    return StagedProduct(kind, staging_dir, timestamp, science, group, additional_metadata=AUX_IMAGE_METADATA)


def _find_aux_metadata(src: Path, kind: IngestionType) -> Path:
    """aux_image_metadata.json, in the run directory or its products/; it must be a JSON object."""
    for rel in (AUX_IMAGE_METADATA, f"{PRODUCTS_DIR}/{AUX_IMAGE_METADATA}"):
        path = confine(src, rel)
        if path.is_file():
            try:
                doc = json.loads(path.read_bytes())
            except (ValueError, UnicodeDecodeError) as exc:
                raise UserError(f"{rel} is not valid JSON: {exc}") from exc
            except OSError as exc:
                raise UserError(f"cannot read {rel}: {exc.strerror}") from exc
            if not isinstance(doc, dict):
                raise UserError(f"{rel} must hold a JSON object")
            return path
    raise UserError(f"{AUX_IMAGE_METADATA} is required for {kind.value} ingestion and was not found "
                    f"in the run directory or {PRODUCTS_DIR}/")


def _pipeline_artifacts(src: Path) -> list[Path]:
    """The CASA run's scripts and logs, from products/ first, then working/ (first hit per name wins)."""
    found: dict[str, Path] = {}
    for sub in (PRODUCTS_DIR, WORKING_DIR):
        d = src / sub
        if not d.is_dir():
            continue
        for entry in _list_dir(d, allow_empty=True):
            if any(fnmatchcase(entry.name, p) for p in PIPELINE_ARTIFACT_PATTERNS) and entry.name not in found:
                _require_regular(entry, src)
                found[entry.name] = entry
    return [found[k] for k in sorted(found)]


# ---------------------------------------------------------------- weblogs


def _is_weblog(entry: Path) -> bool:
    return entry.name == WEBLOG_FILENAME or bool(WEBLOG_DIR_RE.match(entry.name))


def _newest_weblog(src: Path) -> Path:
    """The newest ``pipeline-<YYYYMMDDTHHMMSS>`` weblog directory in working/ or products/.

    CASA names weblog directories by start time, so the name orders them; mtime,
    which a copy or restore rewrites, is only the tie-breaker. A pre-made
    ``products/weblog.tgz`` is used when no weblog directory exists.
    """
    dirs: list[Path] = []
    for sub in (WORKING_DIR, PRODUCTS_DIR):
        d = src / sub
        if d.is_dir():
            dirs.extend(e for e in _list_dir(d, allow_empty=True) if WEBLOG_DIR_RE.match(e.name) and e.is_dir())
    if dirs:
        return max(dirs, key=lambda p: (WEBLOG_DIR_RE.match(p.name).group(0), p.stat().st_mtime, p.name))
    tgz = src / PRODUCTS_DIR / WEBLOG_FILENAME
    if tgz.is_file():
        return tgz
    raise UserError(f"no weblog (pipeline-<timestamp>/ in {WORKING_DIR}/ or {PRODUCTS_DIR}/, "
                    f"or {PRODUCTS_DIR}/{WEBLOG_FILENAME}) in {src.name}")


def _stage_weblog(area: StagingArea, src: Path, weblog: Path) -> StagedAncillary:
    if weblog.is_dir():
        _write_tar(area, WEBLOG_FILENAME, src, [(weblog, weblog.name)], gzip=True)
    else:
        _require_regular(weblog, src)
        _stage_copy(area, weblog, WEBLOG_FILENAME, link=False)
    return StagedAncillary(AncillaryProductType.PIPELINE_WEBLOG, WEBLOG_FILENAME)


# ---------------------------------------------------------------- paths


def _source_dir(source_root: str | Path, source: str) -> Path:
    src = confine(source_root, source)
    if not src.exists():
        raise UserError(f"source directory {source!r} does not exist")
    if not src.is_dir():
        raise UserError(f"source {source!r} is not a directory")
    _list_dir(src)  # readable and not empty, or a UserError now rather than halfway through
    return src


def _fresh_staging(staging_root: str | Path, request_id: str, src: Path) -> tuple[StagingArea, Path]:
    """``<staging_root>/<request_id>``, emptied: a re-run after a crash restages from scratch."""
    root = Path(staging_root).resolve()
    staging_dir = confine(root, request_id)
    if staging_dir == root:
        raise UserError(f"request id {request_id!r} does not name a directory under the staging root")
    if staging_dir == src or src in staging_dir.parents or staging_dir in src.parents:
        raise UserError("staging directory and source directory overlap")
    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    return StagingArea(staging_dir), staging_dir


def _required_subdir(src: Path, name: str) -> Path:
    d = confine(src, name)
    if not d.is_dir():
        raise UserError(f"{src.name}/{name} is missing")
    _list_dir(d)
    return d


def _list_dir(d: Path, *, allow_empty: bool = False) -> list[Path]:
    try:
        entries = sorted((Path(e.path) for e in os.scandir(d)), key=lambda p: p.name)
    except PermissionError as exc:
        raise UserError(f"directory {d.name!r} is not readable") from exc
    except OSError as exc:
        raise UserError(f"cannot list directory {d.name!r}: {exc.strerror}") from exc
    if not entries and not allow_empty:
        raise UserError(f"directory {d.name!r} is empty")
    return entries


def _require_regular(path: Path, root: Path) -> Path:
    """A regular file inside ``root`` (symlinks are followed only if they stay inside)."""
    real = confine(root, str(path.relative_to(root)))
    if not real.is_file():
        raise UserError(f"{path.relative_to(root)} is not a regular file")
    return real


def _product_name(name: str) -> str:
    check_relative_name(name, what="product name", max_length=255)
    if "/" in name or name in (".", ".."):
        raise UserError(f"product name {name!r} must be a plain file name")
    return name


# ---------------------------------------------------------------- writing


def _stage_copy(area: StagingArea, src: Path, name: str, link: bool) -> str:
    """Copy (streamed, atomic) or hard-link ``src`` into staging under ``name``."""
    target = area.path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src.resolve(), target)
            return name
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    try:
        with open(src, "rb") as fin, area.atomic_writer(name) as fout:
            shutil.copyfileobj(fin, fout, BLOCK_SIZE)
    except PermissionError as exc:
        raise UserError(f"{src.name} is not readable") from exc
    return name


def _walk(root: Path, top: Path, arcname: str) -> Iterator[tuple[Path, str]]:
    """(real path, member name) for ``top`` and, if a directory, everything under it, sorted."""
    rel = str(top.relative_to(root))
    if top.is_symlink():
        real = confine(root, rel)  # refuses links that leave the source
        if real.is_dir():
            raise UserError(f"{rel} is a symlinked directory; not supported in a product")
        top = real
    st = top.lstat()
    if stat.S_ISDIR(st.st_mode):
        yield top, arcname
        for child in _list_dir(top, allow_empty=True):
            yield from _walk(root, child, f"{arcname}/{child.name}")
    elif stat.S_ISREG(st.st_mode):
        yield top, arcname
    else:
        raise UserError(f"{rel} is not a regular file or directory")


def _write_tar(area: StagingArea, name: str, root: Path, entries: list[tuple[Path, str]], *,
               gzip: bool = False) -> str:
    """Stream a tar (``w|``: no seeking, constant memory) into staging, atomically.

    The same source gives the same bytes (a gzip header with mtime 0, members as the source has
    them), so a re-run after a failure finds its earlier NGAS copy identical and need not push it.
    """
    with area.atomic_writer(name) as fh:
        compressed = gzip_format.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) if gzip \
            else contextlib.nullcontext(fh)
        with compressed as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.copybufsize = BLOCK_SIZE
            for top, arc in entries:
                check_relative_name(arc, what="tar member")
                for real, member in _walk(root, top, arc):
                    check_relative_name(member, what="tar member")
                    info = tar.gettarinfo(str(real), arcname=member)
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    if info.isreg():
                        try:
                            with open(real, "rb") as f:
                                tar.addfile(info, f)
                        except PermissionError as exc:
                            raise UserError(f"{member} is not readable") from exc
                    else:
                        tar.addfile(info)
    return name
