"""The steps of one FITS cube ingest, as plain functions (flow.py only orders them).

work order → headers + change key (skip?) → CHECKSUM/DATASUM → describe (OID,
instrument, observation, access, metadata, tags, extension data) → record (one
transaction) → previews → SVO → complete.

Only headers and the small extension tables are read, except for the fixity check
(DATASUM covers every data byte) and the sha256 fallback when a cube carries no
CHECKSUM; an unchanged cube therefore costs a header read and a few queries.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.fits import records
from flows.fits.names import accepted_names, decompress, is_fits_name, is_gzipped
from flows.fits.records import CubeRows
from tasks import registry as reg
from tasks.claims import Claim, claim, release
from tasks.errors import UserError, is_user_error
from tasks.home import home_path
from tasks.registry import Registry

log = logging.getLogger(__name__)

DOMAIN = records.DOMAIN
AGENT = "archive-ingest/fits"
STATUS_EXCHANGE = "fits"
FITS_SUFFIX = ".fits"          # what the pipeline writes; names.FITS_SUFFIXES lists everything accepted


def run_logger() -> Any:
    """The run logger inside a flow or task run (so the UI shows it), else ours."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # no run context: plain-function use
        return log


# ---------------------------------------------------------------- configuration


@dataclass
class FitsConfig:
    registry: Registry
    science_root: Path
    preview_root: Path
    svo: Any = None              # blocks.svo.SvoBlock
    transport: Any = None        # tasks.notify.TransportConfig
    status_exchange: str = STATUS_EXCHANGE
    block_name: str = "default"
    claims: list[Claim] = field(default_factory=list)  # held on ``registry``'s connection (hold/release_claims)

    def close(self) -> None:
        self.registry.close()


def default_science_root() -> Path:
    return home_path("science")


def load_config(block_name: str = "default", *, science_root: str | None = None,
                preview_root: str | None = None) -> FitsConfig:
    from blocks.broker import BrokerBlock
    from blocks.register import load_blocks
    from blocks.registry import RegistryBlock
    from blocks.svo import SvoBlock

    root = Path(science_root).resolve() if science_root else default_science_root()
    if not root.is_dir():
        raise UserError(f"the science-data root {root} is not a directory")
    registry, svo, broker = load_blocks([RegistryBlock, SvoBlock, BrokerBlock], block_name)
    return FitsConfig(
        registry=registry.open(),
        science_root=root,
        preview_root=Path(preview_root) if preview_root else home_path("previews"),
        svo=svo,
        transport=broker.transport(),
        block_name=block_name,
    )


@dataclass(frozen=True)
class CubeRequest:
    """What was asked for one cube (the flow's parameters)."""

    relative_path: str
    oid: str | None = None
    owner_emails: tuple[str, ...] = ()
    swedish_data: bool = False
    force: bool = False
    previews: bool = True
    submit_to_svo: bool = False

    def options(self) -> dict[str, Any]:
        return {"oid": self.oid, "owner_emails": list(self.owner_emails), "swedish_data": self.swedish_data,
                "force": self.force, "previews": self.previews, "submit_to_svo": self.submit_to_svo}


# ---------------------------------------------------------------- paths


def resolve_path(science_root: Path, path: str) -> tuple[str, Path]:
    """``path`` relative to the root, or absolute inside it → (relative path, absolute path).

    Symlinks are resolved before the containment check, so a link out of the root is refused.
    """
    from tasks.staging import confine

    text = str(path or "").strip()
    if not text:
        raise UserError("no cube path given")
    if not is_fits_name(text):
        raise UserError(f"{text!r} is not a FITS cube: the file name must end in one of {accepted_names()}")
    base = Path(science_root).resolve()
    if os.path.isabs(text):
        absolute = Path(text).resolve()
        if base not in absolute.parents:
            raise UserError(f"{text} is outside the science-data root {base}")
    else:
        try:
            absolute = confine(base, text)
        except UserError as exc:
            raise UserError(f"{text!r} is outside the science-data root {base}: {exc.message}") from exc
    if not is_fits_name(absolute.name):
        raise UserError(f"{text!r} resolves to {absolute.name}, which is not named as a FITS file "
                        f"({accepted_names()})")
    relative = absolute.relative_to(base).as_posix()
    if not absolute.is_file():
        raise UserError(f"no cube {relative} under the science-data root {base}")
    return relative, absolute


def resolve_directory(science_root: Path, root: str) -> tuple[str, Path]:
    from tasks.staging import confine

    base = Path(science_root).resolve()
    text = str(root or ".").strip() or "."
    if os.path.isabs(text):
        absolute = Path(text).resolve()
        if absolute != base and base not in absolute.parents:
            raise UserError(f"{text} is outside the science-data root {base}")
    elif text in (".", "./"):
        absolute = base
    else:
        try:
            absolute = confine(base, text)
        except UserError as exc:
            raise UserError(f"{text!r} is outside the science-data root {base}: {exc.message}") from exc
    if not absolute.is_dir():
        raise UserError(f"{text} is not a directory under the science-data root {base}")
    return (absolute.relative_to(base).as_posix() or "."), absolute


def find_cubes(science_root: Path, directory: Path) -> list[str]:
    """Every ``*.fits`` file under ``directory`` (symlinked directories are not followed), relative to the root."""
    base = Path(science_root).resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in sorted(filenames):
            if is_fits_name(name) and not name.startswith("."):
                found.append((Path(dirpath) / name).relative_to(base).as_posix())
    return found


# ---------------------------------------------------------------- 1. work order


@dataclass
class Order:
    id: int
    path: str
    absolute: Path
    attempts: int
    oid: str | None
    completed_change_key: str | None

    @property
    def size(self) -> int:
        """Bytes of the stored file (for a .gz, the compressed file: what the archive and the SVO hold)."""
        return self.absolute.stat().st_size

    @property
    def staged(self) -> Path | None:
        """Where this attempt keeps the decompressed copy of a gzipped cube (None: read the file itself)."""
        if not is_gzipped(self.absolute.name):
            return None
        return home_path("staging") / "fits" / f"order-{self.id}-{self.attempts}.fits"

    @property
    def data_path(self) -> Path:
        """A plain FITS file to read: the cube itself, or its decompressed copy (made on first use,
        and again if something removed it between steps)."""
        staged = self.staged
        if staged is None:
            return self.absolute
        if not staged.is_file():
            decompress(self.absolute, staged)
        return staged

    def read(self, fn, *args, **kwargs):
        """``fn(data_path, ...)``; a UserError about the decompressed copy names the stored file instead."""
        try:
            return fn(self.data_path, *args, **kwargs)
        except UserError as exc:
            staged = self.staged
            if staged is None or staged.name not in exc.message:
                raise
            raise UserError(exc.message.replace(staged.name, self.absolute.name)) from exc

    def drop_earlier_copies(self) -> list[str]:
        """Remove decompressed copies of this order made by earlier attempts (call only while claimed:
        a live earlier run of the same file would still be reading its copy)."""
        staged = self.staged
        if staged is None or not staged.parent.is_dir():
            return []
        removed = []
        for copy in staged.parent.glob(f"order-{self.id}-*.fits"):
            if copy != staged:
                copy.unlink(missing_ok=True)
                removed.append(str(copy))
        if removed:
            log.info("removed %d decompressed cop%s left by earlier attempts of %s", len(removed),
                     "y" if len(removed) == 1 else "ies", self.path)
        return removed

    def drop_staged(self) -> list[str]:
        """Remove this attempt's decompressed copy; returns what was removed (for the failure report)."""
        staged = self.staged
        if staged is None or not staged.exists():
            return []
        staged.unlink(missing_ok=True)
        return [str(staged)]


def open_order(cfg: FitsConfig, request: CubeRequest, flow_run_id: str | None = None) -> Order:
    """Resolve the path, claim the file, and move its work order to Started (creating it when new).

    The claim comes first: a second run of the same file (two CLI calls, a single run beside a
    directory ingest) waits here, then reads the order the first one left and finds the cube
    unchanged. Holding it, this run removes the decompressed copies that dead attempts left.
    """
    relative, absolute = resolve_path(cfg.science_root, request.relative_path)
    hold(cfg, path_key(relative))
    row = records.start_order(cfg.registry, relative, request.options(), flow_run_id)
    order = Order(row["id"], relative, absolute, row["attempts"], row["oid"], row["completed_change_key"])
    order.drop_earlier_copies()
    return order


def path_key(relative: str) -> str:
    """The claim on a file. An ingest's own key (and claim) is its OID, which only the headers give."""
    return f"path:{relative}"


def hold(cfg: FitsConfig, key: str) -> None:
    """Take the claim (tasks/claims) on ``key`` for this cube; ``release_claims`` gives it back."""
    cfg.claims.append(claim(cfg.registry, DOMAIN, key))


def release_claims(cfg: FitsConfig) -> None:
    """The cube is done (ingested, skipped or failed): let the next run of it in now. A batch's one
    connection serves many cubes, and would otherwise hold every claim until the batch ends. One
    release per claim taken (a retried step takes it again). Never raises: a lost connection has
    already dropped its locks, and the cube's own outcome is what the caller must see."""
    while cfg.claims:
        held = cfg.claims.pop()
        try:
            release(cfg.registry, held)
        except Exception as exc:  # noqa: BLE001
            log.warning("claim on %s not released (%s); it goes with the connection", held.natural_key, exc)


def queue_request(cfg: FitsConfig, request: CubeRequest) -> dict[str, Any]:
    """Record the request as a Queued work order for ``process-fits-work-orders``; nothing is read yet.

    A path that cannot be a cube is refused now, not when a processor reaches it.
    """
    relative, _ = resolve_path(cfg.science_root, request.relative_path)  # a missing file is refused here
    records.queue_orders(cfg.registry, [relative], request.options())
    row = records.get_order(cfg.registry, relative)
    assert row is not None
    return row


# ---------------------------------------------------------------- 2-3. headers and the skip rule


@dataclass
class Examined:
    headers: Any                  # flows.fits.header.CubeHeaders
    change_key: str
    sha256: str | None            # computed only when some HDU has no CHECKSUM
    skip: bool
    cube: dict[str, Any] | None   # the recorded cube when skipping


def examine(cfg: FitsConfig, order: Order, request: CubeRequest) -> Examined:
    """Read the headers (never the data) and decide whether this exact file is already ingested.

    The change key is the CHECKSUM of every HDU when all have one (free: they are in
    the headers), else the file's sha256. An unchanged key on the last Completed order,
    the same size and the same OID mean the header and metadata steps can be skipped.
    """
    from flows.fits.header import read_headers
    from tasks.checksum import hash_file

    headers = order.read(read_headers)
    values = [h.header.get("CHECKSUM") for h in headers.hdus]
    sha256 = None
    if values and all(isinstance(v, str) and v.strip() for v in values):
        key = "fits-checksum:" + ",".join(v.strip() for v in values)
    else:
        sha256 = hash_file(order.absolute, ("sha256",)).checksums["sha256"]
        key = "sha256:" + sha256
    records.see_change_key(cfg.registry, order.id, key)
    cube = None
    if not request.force and order.completed_change_key == key and order.oid and request.oid in (None, order.oid):
        cube = records.get_cube(cfg.registry, order.oid)
        if cube is not None and (cube["size"] != order.size or cube["path"] != order.path):
            cube = None
    return Examined(headers, key, sha256, skip=cube is not None, cube=cube)


# ---------------------------------------------------------------- 3a. skipped


@dataclass
class Recorded:
    cube: dict[str, Any]
    ingest_id: int
    rows: CubeRows | None = None


def record_skip(cfg: FitsConfig, order: Order, examined: Examined, flow_run_id: str | None = None) -> Recorded:
    """The cube is unchanged: count the attempt and leave a 'skipped' ingestion event, nothing else."""
    cube = examined.cube
    assert cube is not None
    hold(cfg, cube["oid"])  # whoever moves an ingest to in_ingestion holds its claim (reconcile asks it)
    ingest = cfg.registry.begin_ingest(DOMAIN, cube["oid"], flow_run_id=flow_run_id,
                                       details={"path": order.path, "work_order": order.id})
    cfg.registry.record_event(
        ingest, reg.INGESTION, subject=cube["oid"], agent=AGENT, outcome="skipped",
        discriminator=f"skip-{order.id}-{order.attempts}",
        detail=f"{order.path} unchanged since its last completed ingest ({examined.change_key[:60]}); "
               "header and metadata steps skipped")
    run_logger().info("%s is unchanged (%s): header and metadata steps skipped", order.path, examined.change_key[:40])
    return Recorded(cube, ingest.id)


def start(cfg: FitsConfig, request: CubeRequest, flow_run_id: str | None = None) -> tuple[Order, Examined]:
    """Steps 1-3 together: open the work order and read the headers; one task, so a skip costs two."""
    order = open_order(cfg, request, flow_run_id)
    try:
        return order, examine(cfg, order, request)
    except BaseException as exc:
        exc.fits_order = order  # type: ignore[attr-defined]  # so the failure lands on this work order
        raise


def finish_unchanged(cfg: FitsConfig, order: Order, examined: Examined, request: CubeRequest,
                     flow_run_id: str | None = None) -> tuple[Recorded, dict[str, Any] | None, dict[str, Any]]:
    """The whole skip path after the header read: event, preview check and completion in one task.

    A Prefect task run costs milliseconds while this work costs about one, so splitting it
    would make an unchanged re-ingest mostly orchestration.
    """
    recorded = record_skip(cfg, order, examined, flow_run_id)
    previews = make_previews(cfg, order, recorded, examined.change_key) if request.previews else None
    row = complete(cfg, order, examined, recorded, skipped=True)
    return recorded, previews, row


# ---------------------------------------------------------------- 4. fixity


def verify(cfg: FitsConfig, order: Order, examined: Examined) -> list[dict[str, Any]]:
    """CHECKSUM/DATASUM of every HDU; a mismatch is a UserError and nothing gets recorded."""
    from flows.fits.header import verify_checksums

    return [{"index": c.index, "name": c.name or ("PRIMARY" if c.index == 0 else ""),
             "checksum": c.checksum.name, "datasum": c.datasum.name, "value": c.checksum_value}
            for c in order.read(verify_checksums)]


# ---------------------------------------------------------------- 5-11. describe


def known_instruments(registry: Registry) -> tuple[str, ...]:
    return tuple(r["name"] for r in registry.execute("SELECT name FROM fits_instruments ORDER BY name"))


def describe(cfg: FitsConfig, order: Order, request: CubeRequest, examined: Examined,
             checksums: list[dict[str, Any]]) -> CubeRows:
    """Everything the registry will hold about the cube, from its headers and small tables only."""
    from flows.fits.access import access_grants, release_info
    from flows.fits.extensions import read_extension_data
    from flows.fits.metadata import extract_metadata, header_text
    from flows.fits.observation import instrument_name, observation
    from flows.fits.oid import observation_id
    from flows.fits.tags import extract_tags

    headers = examined.headers
    primary = headers.primary
    name = order.absolute.name
    # Instrument first: for a file from elsewhere "unknown instrument" is the useful answer.
    instrument = instrument_name(primary, known_instruments(cfg.registry))
    meta = extract_metadata(primary)
    extensions = order.read(read_extension_data)
    oid = observation_id(primary, filename=name, scan_numbers=extensions.scan_numbers, oid=request.oid)
    hold(cfg, oid)  # two files with one OID at once: the second waits, then finds it taken
    check_oid_is_free(cfg, oid, order.path)
    obs = observation(primary, name)
    release = release_info(primary)
    grants = access_grants(request.owner_emails, request.swedish_data)
    tags = extract_tags(primary)
    if meta.unknown:
        run_logger().info("%s: %d keyword(s) without a metadata column kept in the header text: %s", name,
                       len(meta.unknown), ", ".join(meta.unknown[:20]))
    if tags.unmatched:
        run_logger().warning("%s: FEATURES/EVENTS terms outside the vocabulary: %s", name, ", ".join(tags.unmatched))
    extension_headers = {}
    for hdu in headers.hdus[1:]:
        extension_headers[f"{hdu.index}:{hdu.name}"] = header_text(hdu.header)
    ext_data = {}
    if extensions.r0 is not None:
        ext_data["r0"] = extensions.r0
    if extensions.line_profile is not None:
        ext_data["line_profile"] = extensions.line_profile
    date_beg = meta.columns.get("date_beg")
    date_end = meta.columns.get("date_end")
    return CubeRows(
        oid=oid, path=order.path, filename=name, size=order.size, instrument=instrument,
        observation_key=obs.key, grouping=str(obs.grouping), change_key=examined.change_key,
        checksums=checksum_summary(examined, checksums),
        date_beg=date_beg if isinstance(date_beg, dt.datetime) else None,
        date_end=date_end if isinstance(date_end, dt.datetime) else None,
        release_date=release.date, release_comment=release.comment, release_provided=release.provided,
        grants=[(g.kind, g.principal) for g in grants], header_text=meta.header_text,
        extension_headers=extension_headers, unknown_keywords=list(meta.unknown), metadata=meta.columns,
        features=tags.features, events=tags.events, features_ingested=tags.features_ingested,
        events_ingested=tags.events_ingested, unmatched_tags=tags.unmatched, extension_data=ext_data,
    )


def check_oid_is_free(cfg: FitsConfig, oid: str, path: str) -> None:
    """One OID, one file. The OID's record follows a cube that *moved* (its old file is gone); while
    the recorded file still exists, a second file claiming the same OID is a UserError naming both,
    checked before anything is written. Without it the two files took turns owning the record."""
    recorded = records.get_cube(cfg.registry, oid)
    if recorded is None or recorded["path"] == path:
        return
    if (Path(cfg.science_root) / recorded["path"]).exists():
        raise UserError(f"{path} has observation id {oid}, which already belongs to {recorded['path']}: two "
                        "files cannot share one OID. Remove or rename one of them, or ingest this one with "
                        "its own --oid")


def checksum_summary(examined: Examined, checksums: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"change_key": examined.change_key, "hdus": checksums}
    if examined.sha256:
        out["sha256"] = examined.sha256
    return out


# ---------------------------------------------------------------- 6-11. record


def record(cfg: FitsConfig, order: Order, rows: CubeRows, flow_run_id: str | None = None) -> Recorded:
    """Cube, observation, access, header, metadata, tags and extension data in one transaction, then events."""
    r = cfg.registry
    ingest = r.begin_ingest(DOMAIN, rows.oid, flow_run_id=flow_run_id,
                            details={"path": rows.path, "work_order": order.id})
    cube = records.upsert_cube(r, rows, ingest_id=ingest.id, order_id=order.id)
    file_checksums = {f"fits-checksum-{h['index']}": h["value"] for h in rows.checksums["hdus"] if h.get("value")}
    if rows.checksums.get("sha256"):
        file_checksums["sha256"] = rows.checksums["sha256"]
    r.upsert_file(DOMAIN, rows.oid, ingest_id=ingest.id, vault_uri=(cfg.science_root / rows.path).as_uri(),
                  size=rows.size, checksums=file_checksums)
    subject, key = rows.oid, rows.change_key
    hdus = rows.checksums["hdus"]
    verified = [h for h in hdus if h["checksum"] == "OK" or h["datasum"] == "OK"]
    r.record_event(ingest, reg.FIXITY_CHECK, subject=subject, agent=AGENT, discriminator=key,
                   outcome="success",
                   detail=(f"CHECKSUM/DATASUM verified on {len(verified)} of {len(hdus)} HDUs" if verified
                           else "no CHECKSUM/DATASUM in the file"))
    if rows.checksums.get("sha256"):
        r.record_event(ingest, reg.DIGEST_CALCULATION, subject=subject, agent=AGENT, discriminator=key,
                       detail=f"sha256 {rows.checksums['sha256']}")
    r.record_event(ingest, reg.FORMAT_IDENTIFICATION, subject=subject, agent=AGENT, discriminator=key,
                   detail=f"FITS, {len(hdus)} HDUs, INSTRUME={rows.instrument}")
    r.record_event(ingest, reg.IDENTIFIER_ASSIGNMENT, subject=subject, agent=AGENT, discriminator=key,
                   detail=f"oid {rows.oid}")
    grants = ", ".join(f"{k}:{p}" for k, p in rows.grants) or "none"
    r.record_event(ingest, reg.ACCESS_ASSIGNMENT, subject=subject, agent=AGENT, discriminator=key,
                   detail=f"release {rows.release_date.isoformat()}; grants {grants}")
    return Recorded(cube, ingest.id, rows)


# ---------------------------------------------------------------- 12. previews


def make_previews(cfg: FitsConfig, order: Order, recorded: Recorded, change_key: str) -> dict[str, Any]:
    """JPEG + 78-px thumbnail and (with ffmpeg) a WebM; each only when its source changed.

    A preview is a convenience, not part of the archived cube, and this step runs after the cube is
    recorded: a preview that cannot be made from the input (no image in the primary HDU, an
    unreadable PNG, a .mov ffmpeg refuses) is a note in the result and a failed ``creation`` event,
    never a failed ingest. Anything else (a full disk, a dead registry) is transient and retried.
    """
    from flows.fits.previews import make_image_previews, make_video_preview, sibling

    cube = recorded.cube
    out_dir = cfg.preview_root / Path(order.path).parent
    previous = records.previews(cfg.registry, cube["id"])
    out: dict[str, Any] = {}
    try:
        image = order.read(make_image_previews, out_dir, cube_change_key=change_key,
                           previous_key=(previous.get("image") or {}).get("source_key"), sibling_of=order.absolute)
    except UserError as exc:
        image = None
        out.update(image=None, regenerated=False, note=f"no preview image: {exc.message}")
        _preview_note(cfg, recorded, f"image-{change_key}", out["note"])
    else:
        records.upsert_preview(cfg.registry, cube["id"], "image", path=str(image.full_size),
                               thumbnail_path=str(image.thumbnail), source=image.source,
                               source_key=image.source_key, width=image.width, height=image.height)
        out.update(image=str(image.full_size), thumbnail=str(image.thumbnail), source=image.source,
                   regenerated=image.regenerated)
    try:
        video = make_video_preview(order.absolute, out_dir,
                                   previous_key=(previous.get("video") or {}).get("source_key"))
    except UserError as exc:
        video = None
        out.update(video=None, video_note=f"no video preview: {exc.message}")
        _preview_note(cfg, recorded, "video", out["video_note"])
    if video is not None:
        records.upsert_preview(cfg.registry, cube["id"], "video", path=str(video.path), thumbnail_path=None,
                               source="mov", source_key=video.source_key)
        out["video"] = str(video.path)
        out["video_regenerated"] = video.regenerated
    elif "video_note" not in out and sibling(order.absolute, ".mov").is_file():
        out["video"] = None
        out["video_note"] = "ffmpeg is not on PATH; the .mov was not converted"
    if image is not None and (image.regenerated or (video is not None and video.regenerated)):
        ingest = cfg.registry.ingest_by_id(recorded.ingest_id)
        if ingest is not None:
            cfg.registry.record_event(ingest, reg.CREATION, subject=cube["oid"], agent=AGENT,
                                      discriminator=f"previews-{image.source_key}",
                                      detail=f"previews from {image.source}: {image.full_size.name}, "
                                             f"{image.thumbnail.name}" + (f", {video.path.name}" if video else ""))
    return out


def _preview_note(cfg: FitsConfig, recorded: Recorded, what: str, note: str) -> None:
    run_logger().warning("%s: %s", recorded.cube["oid"], note)
    ingest = cfg.registry.ingest_by_id(recorded.ingest_id)
    if ingest is not None:
        cfg.registry.record_event(ingest, reg.CREATION, subject=recorded.cube["oid"], agent=AGENT,
                                  outcome="failure", discriminator=f"previews-failed-{what}", detail=note)


# ---------------------------------------------------------------- 13. SVO


def svo_record(cfg: FitsConfig, source: dict[str, Any], keywords: list[dict]) -> tuple[Any, list[str]]:
    """The SVO record of one cube, from what the registry holds (the archive is the source of truth)."""
    from astropy.io import fits

    from flows.fits.svo import build_record, svo_file_path

    header = fits.Header.fromstring(source["header_text"], sep="\n")
    return build_record(
        oid=source["oid"], dataset=source["svo_dataset"], header=header, keywords=keywords,
        file_url=cfg.svo.file_url(cfg.science_root, source["path"]),
        file_path=svo_file_path(source["path"]),
        file_size=source["size"], thumbnail_url=cfg.svo.thumbnail_url(cfg.preview_root, source["thumbnail_path"]),
        tags=source.get("tags") or (),
    )


def submit_to_svo(cfg: FitsConfig, oid: str) -> dict[str, Any]:
    """Create or update the cube's SVO record; the outcome is kept in fits_svo_submissions."""
    from flows.fits.svo import SvoAuthError, SvoRejected

    sources = records.svo_sources(cfg.registry, [oid])
    if not sources or not sources[0]["svo_dataset"]:
        raise UserError(f"cube {oid} has no SVO dataset (its instrument has none configured)")
    source = sources[0]
    dataset = source["svo_dataset"]
    cfg.svo.require_file_url_base()          # refused before anything is sent
    with cfg.svo.client() as client:
        record_, missing = svo_record(cfg, source, client.keywords(dataset))
        if missing:
            run_logger().info("%s: %d SVO keyword(s) absent from the header: %s", oid, len(missing),
                           ", ".join(missing[:20]))
        for warning in record_.skipped:
            run_logger().warning("%s: %s", oid, warning)
        try:
            action = client.submit(record_)
        except (SvoAuthError, SvoRejected) as exc:
            records.record_svo(cfg.registry, oid, dataset, state="failed", action="submit", error=exc.message)
            raise
    records.record_svo(cfg.registry, oid, dataset, state="submitted", action=action)
    out: dict[str, Any] = {"dataset": dataset, "action": action, "oid": oid}
    if record_.skipped:
        out["warnings"] = list(record_.skipped)
    return out


# ---------------------------------------------------------------- completion and failure


def complete(cfg: FitsConfig, order: Order, examined: Examined, recorded: Recorded, *,
             skipped: bool) -> dict[str, Any]:
    oid = recorded.cube["oid"]
    row = records.complete_order(cfg.registry, order.id, oid=oid, change_key=examined.change_key,
                                 ingest_id=recorded.ingest_id, skipped=skipped)
    ingest = cfg.registry.ingest_by_id(recorded.ingest_id)
    if ingest is not None and not skipped:
        cfg.registry.record_event(ingest, reg.INGESTION, subject=oid, agent=AGENT, discriminator=examined.change_key,
                                  detail=f"{order.path} ({recorded.cube['size']} bytes)")
    cfg.registry.set_state(recorded.ingest_id, "skipped" if skipped else "completed",
                           details={"path": order.path, "change_key": examined.change_key})
    order.drop_staged()
    return row


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return exc.message
    cause = exc
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__
    if isinstance(cause, UserError):
        return cause.message
    return f"{type(exc).__name__}: {exc}"


def fail(cfg: FitsConfig, order: Order | None, ingest_id: int | None, exc: BaseException) -> dict[str, Any] | None:
    """Record a failed attempt on the work order and the ingest; never raises over the original error."""
    reason = describe_error(exc)
    row = None
    try:
        if order is not None:
            exc.fits_cleaned = order.drop_staged()  # type: ignore[attr-defined]  # for the failure report
            row = records.fail_order(cfg.registry, order.id, reason, user_error=is_user_error(exc))
        if ingest_id is not None:
            cfg.registry.set_state(ingest_id, "failed", error=reason)
    except Exception as db_exc:  # the registry itself may be what failed
        log.warning("could not record the failure of %s: %s", order.path if order else "?", db_exc)
    return row


def notify_status(cfg: FitsConfig, summary: dict[str, Any]) -> None:
    """One status message per run; a notification problem is logged, never turned into a failed ingest."""
    from tasks.notify import Notification, notify

    if cfg.transport is None:
        return
    body = {k: summary.get(k) for k in ("oid", "path", "state", "error", "root", "counts") if k in summary}
    work_order = summary.get("work_order")
    if work_order:
        body["work_order"] = {k: work_order.get(k) for k in ("id", "path", "state", "attempts")}
    try:
        notify(Notification(exchange=cfg.status_exchange, routing_key=f"fits.ingest.{summary.get('state')}",
                            body=body), cfg.transport)
    except Exception as exc:
        run_logger().warning("status notification not delivered: %s", exc)


# ---------------------------------------------------------------- summaries


def result_summary(*, state: str, path: str | None, oid: str | None = None, order_row: dict[str, Any] | None = None,
                   recorded: Recorded | None = None, examined: Examined | None = None,
                   checksums: list[dict[str, Any]] | None = None, previews: dict[str, Any] | None = None,
                   svo: dict[str, Any] | None = None, error: str | None = None,
                   timings: dict[str, float] | None = None) -> dict[str, Any]:
    """The JSON line the CLI prints and the flow returns."""
    cube = recorded.cube if recorded else None
    out: dict[str, Any] = {
        "oid": oid or (cube["oid"] if cube else None) or (order_row or {}).get("oid"),
        "state": state,
        "path": path,
        "work_order": records.work_order(order_row),
    }
    if cube is not None:
        out["size"] = cube["size"]
        out["instrument"] = cube["instrument"]
        out["checksums"] = cube["checksums"]
    elif examined is not None:
        out["checksums"] = checksum_summary(examined, checksums or [])
    if previews is not None:
        out["previews"] = previews
    if svo is not None:
        out["svo"] = svo
    if timings:
        out["timings"] = {k: round(v, 4) for k, v in timings.items()}
    if error:
        out["error"] = error
    return out


@dataclass
class Timer:
    """Seconds per step, for the summary and the UI report."""

    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
