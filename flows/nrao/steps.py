"""The steps of one NRAO product ingest, as plain functions (the flow only orders them).

register → stage → check what is recorded → manifest + ingestion artifacts + archive plan
→ archive every file to NGAS (CRC checked) → record product and files → notify → clean up.

Each step is safe to repeat: staging is rebuilt from scratch under a directory named
after the request, files NGAS already confirmed in this run are not pushed again on a
retry, and registry rows are written in one transaction only after every CRC matched.

A re-run of a request that failed or crashed part-way (the same ingest) takes the locators
its earlier attempt gave out, so every file keeps its NGAS file id, and a file NGAS already
confirmed with identical bytes (same size and sha256, and NGAS still lists that version) is
not pushed again (records.attempt_*).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from flows.nrao import records
from flows.nrao.collectors import COLLECTORS, StagedProduct
from flows.nrao.envoy import images_metadata
from flows.nrao.fits_metadata import ImageMetadata
from flows.nrao.manifest import LOCATOR_KIND, ArchiveItem, IngestionManifest, archive_plan, finish_setup
from flows.nrao.ngas import ArchiveResult, NgasClient, NgasError, NgasFailure
from flows.nrao.products import (AUX_IMAGE_METADATA, MANIFEST_FILENAME, IngestionType, Telescope, check_locator,
                                 new_locator)
from flows.reporting import Progress
from tasks.checksum import hash_file
from tasks.claims import claim
from tasks.errors import UserError
from tasks.notify import Notification, notify
from tasks.registry import Registry
from tasks.staging import confine

log = logging.getLogger(__name__)


def _logger() -> Any:
    """The run logger inside a flow or task run (so the UI shows NGAS's replies), else ours."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # no run context: plain-function use
        return log

DOMAIN = records.DOMAIN
COMPLETED_KEY = "nrao.ingest.completed"
FAILED_KEY = "nrao.ingest.failed"
# Where a calibration run names its input execution block when --input-locator is not given
# (the Workspaces CASA run directory carries it as metadata.json "productLocator").
RUN_METADATA = "metadata.json"
EXTRA_DIGESTS = ("sha256",)  # besides the CRC, computed in the same pass as the upload
TOPOLOGY_QUEUE = "nrao.ingest.status"


class NraoRequest(BaseModel):
    """One ingest request: what the envoy's command line says (and what the UI form shows)."""

    kind: IngestionType = Field(description="calibration | image | observation | seci")
    source: str = Field(description="CASA run directory (or the SDM directory for an observation), relative to "
                                    "the source root or an absolute path beneath it")
    input_locator: str | None = Field(default=None, description="Input science product: the execution block of a "
                                      "calibration, the calibration of an image or SECI")
    telescope: Telescope = Telescope.EVLA
    product_name: str | None = Field(default=None, description="Calibration tar name (default: the run directory)")
    reingest: bool = Field(default=False, description="Archive new NGAS versions of a product already recorded")
    dry_run: bool = Field(default=False, description="Stage and write the manifest only: no NGAS, no registry")
    correlation_id: str | None = None


# ---------------------------------------------------------------- configuration


@dataclass
class NraoConfig:
    """Everything one ingest needs, resolved once per run from block documents."""

    ngas_block: Any            # blocks.ngas.NgasBlock
    registry_block: Any        # blocks.registry.RegistryBlock
    transport: Any             # tasks.notify.TransportConfig
    exchange: str
    source_root: Path
    staging_root: Path
    _registry: Registry | None = field(default=None, repr=False)
    _ngas: NgasClient | None = field(default=None, repr=False)
    _ngas_url: str | None = field(default=None, repr=False)

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self.registry_block.open()
        return self._registry

    def read_only_registry(self) -> Registry:
        """No migrations, no writes: what a dry run may use."""
        if self._registry is None:
            self._registry = self.registry_block.open(migrate=False)
        return self._registry

    @property
    def ngas_url(self) -> str:
        if self._ngas_url is None:
            self._ngas_url = self.ngas_block.resolved_url()
        return self._ngas_url

    @property
    def ngas(self) -> NgasClient:
        if self._ngas is None:
            self._ngas = self.ngas_block.client(self.ngas_url)
        return self._ngas

    def file_uri(self, file_id: str, version: int) -> str:
        """A local archive's file is a real path; a real NGAS's is its RETRIEVE URL."""
        if not self.ngas_block.url:
            return (self.ngas_block.local_path().resolve() / file_id / str(version)).as_uri()
        return f"{self.ngas_url.rstrip('/')}/RETRIEVE?file_id={file_id}&file_version={version}"

    def close(self) -> None:
        if self._ngas is not None:
            self._ngas.close()
        if self._registry is not None:
            self._registry.close()


def load_config(block_name: str = "default", *, ngas_url: str | None = None) -> NraoConfig:
    from blocks.broker import BrokerBlock
    from blocks.ngas import NgasBlock
    from blocks.register import load_blocks
    from blocks.registry import RegistryBlock

    ngas, registry, broker = load_blocks([NgasBlock, RegistryBlock, BrokerBlock], block_name)
    if ngas_url:
        ngas = ngas.model_copy(update={"url": ngas_url})
    return NraoConfig(ngas_block=ngas, registry_block=registry,
                      transport=broker.transport(), exchange=ngas.status_exchange,
                      source_root=ngas.source_path(), staging_root=ngas.staging_path())


# ---------------------------------------------------------------- results passed between steps


@dataclass
class Staged:
    product: StagedProduct
    source: str                       # relative to the source root
    request_id: str
    input_locator: str | None
    aux: dict[str, Any] | None
    staged_at: datetime | None = None  # the artifact timestamp's time (an earlier attempt's, on a re-run)


@dataclass
class Plan:
    manifest: IngestionManifest
    items: list[ArchiveItem]
    science: list[records.ScienceEntry]
    owner: dict[str, str]             # staged name → science product file name (absent: group level)
    images: dict[str, ImageMetadata]
    known: records.Known
    group: str = ""                   # the ingest's natural key: where the attempt's own rows live

    @property
    def total_bytes(self) -> int:
        return sum(i.path.stat().st_size for i in self.items)


class ArchiveProgress:
    """Files NGAS confirmed in this run. The flow hands the same object to every try of the
    archive task, so a retry after a 503 or a CRC mismatch resumes at the file that failed
    instead of pushing confirmed files again as new versions."""

    def __init__(self) -> None:
        self.done: dict[str, records.ArchivedFile] = {}


# ---------------------------------------------------------------- 0. naming


def natural_key(req: NraoRequest, source: str) -> str:
    return f"{req.kind.value}:{source}"


def relative_source(source_root: Path, source: str) -> str:
    """The source as a path under the root; an absolute path is accepted only beneath it."""
    if not source or not source.strip():
        raise UserError("no source directory given")
    if os.path.isabs(source):
        root = source_root.resolve()
        target = Path(source).resolve()
        if target != root and root not in target.parents:
            raise UserError(f"source {source!r} is outside the source root {str(root)!r}")
        source = str(target.relative_to(root)) if target != root else "."
    if source.strip("/") in ("", "."):
        raise UserError("the source must be a directory beneath the source root, not the root itself")
    confine(source_root, source)  # '..' and symlinks out are refused here, before anything else runs
    return source.strip("/")


def request_id(req: NraoRequest, source: str) -> str:
    """Staging directory name: the same request always restages into the same place."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name)[:80] or "source"
    digest = hashlib.sha256(f"{req.kind.value}\0{source}".encode()).hexdigest()[:10]
    return f"{req.kind.value}-{slug}-{digest}"


# ---------------------------------------------------------------- 1. register


def register(cfg: NraoConfig, req: NraoRequest, flow_run_id: str | None) -> int:
    """Register the ingest, holding the request's claim (tasks/claims) for the rest of the run: a second
    run of the same request waits here, then finds the product recorded (refused) or, after a failure,
    continues from the first one's attempt rows; it never stages or pushes beside it."""
    source = relative_source(cfg.source_root, req.source)
    claim(cfg.registry, DOMAIN, natural_key(req, source))
    ingest = cfg.registry.begin_ingest(DOMAIN, natural_key(req, source), flow_run_id=flow_run_id, details={
        "kind": req.kind.value, "source": source, "reingest": req.reingest,
        "correlation_id": req.correlation_id})
    return ingest.id


# ---------------------------------------------------------------- 2. stage


def stage(cfg: NraoConfig, req: NraoRequest) -> Staged:
    """Collect the products into ``<staging root>/<request id>`` (rules: docs/nrao.md)."""
    source = relative_source(cfg.source_root, req.source)
    rid = request_id(req, source)
    options: dict[str, Any] = {}
    if req.kind is IngestionType.CALIBRATION and req.product_name:
        options["product_name"] = req.product_name
    # A re-run stages with its earlier attempt's time: same artifact names, same manifest, same bytes.
    registry = cfg.read_only_registry() if req.dry_run else cfg.registry
    when = records.attempt_staged_at(registry, natural_key(req, source)) or datetime.now(timezone.utc)
    product = COLLECTORS[req.kind](cfg.source_root, source, cfg.staging_root, rid, now=when, **options)
    aux = None
    if product.additional_metadata:
        aux = json.loads((product.staging_dir / product.additional_metadata).read_bytes())
    locator = input_locator(cfg, req, source, aux)
    return Staged(product, source, rid, locator, aux, when)


def input_locator(cfg: NraoConfig, req: NraoRequest, source: str, aux: dict[str, Any] | None) -> str | None:
    """The given locator, else the one the run itself names (calibration: metadata.json
    ``productLocator``; image/SECI: aux_image_metadata.json ``calProductLocator``)."""
    if req.input_locator:
        return check_locator(req.input_locator)
    found = None
    if req.kind is IngestionType.CALIBRATION:
        meta = confine(cfg.source_root, f"{source}/{RUN_METADATA}")
        if meta.is_file():
            try:
                doc = json.loads(meta.read_bytes())
            except (ValueError, UnicodeDecodeError) as exc:
                raise UserError(f"{RUN_METADATA} is not valid JSON: {exc}") from exc
            found = doc.get("productLocator") if isinstance(doc, dict) else None
        if not found:
            raise UserError("calibration ingestion needs the execution block locator: pass --input-locator "
                            f"or put productLocator in the run's {RUN_METADATA}")
    elif req.kind in (IngestionType.IMAGE, IngestionType.SECI):
        found = (aux or {}).get("calProductLocator")
        if not found:
            raise UserError(f"{req.kind.value} ingestion needs the calibration locator: pass it on the command "
                            f"line or as calProductLocator in {AUX_IMAGE_METADATA}")
    return check_locator(found) if found else None


# ---------------------------------------------------------------- 3. what is recorded already


def science_keys(staged: Staged) -> list[str]:
    return [records.product_key(sp.type.value, sp.filename) for sp in staged.product.science_products]


def check_recorded(cfg: NraoConfig, req: NraoRequest, staged: Staged) -> records.Known:
    """Refuse a product already recorded, unless this is a reingest (which reuses its locators)."""
    keys = science_keys(staged)
    if req.dry_run:
        known = records.known_products_readonly(cfg.read_only_registry(), keys)
    else:
        known = records.known_products(cfg.registry, keys)
    if known.products and not req.reingest:
        raise records.AlreadyRecorded(records.already_recorded_message([p["product_key"] for p in known.products],
                                                                       [p["locator"] for p in known.products]),
                                      groups=[p["product_group"] for p in known.products])
    if req.reingest and not known.products:
        _logger().info("--reingest given but nothing of %s is recorded yet; ingesting as new", ", ".join(keys))
    return known


# ---------------------------------------------------------------- 4. manifest, artifacts, plan


def prepare(cfg: NraoConfig, req: NraoRequest, staged: Staged, known: records.Known) -> Plan:
    """Write the manifest and the ingestion artifacts tar, then decide every file's NGAS id.

    Image headers are read here, before anything is pushed, so a bad FITS stops the
    ingest while NGAS is still untouched. Locators come from the registry (a reingest),
    else from an earlier attempt of this ingest, else they are minted; a real run keeps
    them (``nrao_attempt_locators``) before the first push.
    """
    product = staged.product
    group = natural_key(req, staged.source)
    manifest = finish_setup(product, telescope=req.telescope, input_locator=staged.input_locator,
                            reingest=req.reingest, ngas_ingest=not req.dry_run)
    images = images_metadata(product)
    if req.dry_run:
        earlier = records.attempt_locators_readonly(cfg.read_only_registry(), group)
    else:
        earlier = records.attempt_locators(cfg.registry, group)
        if staged.staged_at is not None:
            records.save_attempt_staged_at(cfg.registry, group, staged.staged_at)
    for _ in range(2):  # a second pass only if another run of the request stored other locators first
        science, items, slots = _assign_locators(req, product, manifest, known, earlier)
        if req.dry_run:
            break
        stored = records.save_attempt_locators(cfg.registry, group, slots)
        if all(stored.get(slot) == loc for slot, loc in slots.items()):
            break
        earlier = stored
    else:
        raise NgasError(f"could not settle the locators of {group}: another run keeps changing them")
    if any(loc == earlier.get(slot) for slot, loc in slots.items()):
        _logger().info("re-run of %s: reusing the locators of its earlier attempt", group)
    owner: dict[str, str] = {}
    for sp in manifest.science_products:
        for name in (sp.members or (sp.filename,)) + tuple(a.filename for a in sp.ancillary_products):
            owner[name] = sp.filename
    return Plan(manifest, items, science, owner, images, known, group)


def _assign_locators(req: NraoRequest, product: StagedProduct, manifest: IngestionManifest, known: records.Known,
                     earlier: dict[str, str]) -> tuple[list[records.ScienceEntry], list[ArchiveItem], dict[str, str]]:
    """Science entries, the archive plan, and the locator of every slot (what an attempt keeps)."""
    science: list[records.ScienceEntry] = []
    locators: dict[str, str] = {}
    for sp in manifest.science_products:
        recorded = known.by_name.get(sp.filename)
        loc = recorded or earlier.get(sp.filename) or new_locator(req.telescope,
                                                                   LOCATOR_KIND.get(sp.type, sp.type.value))
        locators[sp.filename] = loc
        science.append(records.ScienceEntry(sp.filename, sp.type.value, loc, minted=recorded is None))
        for a in sp.ancillary_products:
            if a.filename in known.by_name or a.filename in earlier:
                locators[a.filename] = known.by_name.get(a.filename) or earlier[a.filename]
    for a in manifest.ancillary_products:
        # Timestamped artifacts get a new name on every ingest; a reingest (or a re-run) keeps their
        # locator by type, so NGAS stores a new version of the same file id.
        loc = known.by_name.get(a.filename) or known.by_role.get(a.type.value) or earlier.get(_role_slot(a.type.value))
        if loc:
            locators[a.filename] = loc
    items = archive_plan(product, manifest, locators=locators)
    by_name = {i.name: i.locator for i in items}
    slots = {sp.filename: sp.locator for sp in science}
    for sp in manifest.science_products:
        slots.update({a.filename: by_name[a.filename] for a in sp.ancillary_products})
    slots.update({_role_slot(a.type.value): by_name[a.filename] for a in manifest.ancillary_products})
    return science, items, slots


def _role_slot(role: str) -> str:
    return f"role:{role}"


# ---------------------------------------------------------------- 5. archive


def archive(cfg: NraoConfig, plan: Plan, progress: ArchiveProgress) -> list[records.ArchivedFile]:
    """Push every planned file to NGAS in order; each counts only once NGAS confirmed its CRC.

    Each confirmed file is kept on the attempt's books at once (``nrao_attempt_files``), and a
    file an earlier attempt of this ingest already archived with the same bytes is taken from
    there instead of being pushed again.
    """
    client = cfg.ngas
    earlier = records.attempt_files(cfg.registry, plan.group) if plan.group else {}
    ingest = cfg.registry.get_ingest(DOMAIN, plan.group) if plan.group else None
    bar = Progress(f"archive {len(plan.items)} file(s) to NGAS", plan.total_bytes)
    for item in plan.items:
        if item.name in progress.done:
            bar.advance(progress.done[item.name].size)
            continue
        prior = earlier.get(item.file_id)
        reused = already_archived(cfg, plan, item, prior) if prior else None
        if reused is not None:
            _logger().info("%s is already in NGAS as %s version %d (archived by an earlier attempt, same sha256); "
                           "not pushed again", item.name, reused.ngas_file_id, reused.file_version)
            progress.done[item.name] = reused
            bar.advance(reused.size)
            continue
        try:
            result = client.archive(item.path, file_id=item.file_id, mime_type=item.mime_type,
                                    extra_algorithms=EXTRA_DIGESTS, label=item.name)
        except NgasError as exc:
            _logger().error("NGAS did not archive %s as %s: %s", item.name, item.file_id, exc.message)
            raise
        _logger().info("NGAS archived %s as %s version %d (%d bytes, %s %s, %d attempt(s)): %s", item.name,
                 result.file_id, result.file_version, result.file_size, result.checksum_plugin, result.checksum,
                 result.attempts, result.status.message)
        done = archived_file(cfg, plan, item, result)
        if plan.group:
            records.save_attempt_file(cfg.registry, plan.group, ingest.id if ingest else None, done, cfg.ngas_url)
        progress.done[item.name] = done
        bar.advance(result.file_size)
    bar.finish()
    return [progress.done[item.name] for item in plan.items]


def already_archived(cfg: NraoConfig, plan: Plan, item: ArchiveItem,
                     prior: dict[str, Any]) -> records.ArchivedFile | None:
    """The earlier attempt's version of this file, if its bytes are the staged bytes and NGAS still has it.

    Size first (free), then one local sha256 read, then NGAS's own record of that version (size and
    CRC): a version that vanished, or a server that is not the one the attempt used, means a push.
    """
    size = item.path.stat().st_size
    sha256 = (prior.get("checksums") or {}).get("sha256")
    if prior["size"] != size or not sha256:
        return None
    if hash_file(item.path, ("sha256",)).checksums["sha256"] != sha256:
        return None
    try:
        fs = cfg.ngas.file_status(item.file_id, prior["file_version"])
    except NgasFailure:  # NgasFileUnavailable above all: the version is gone, so push again
        return None
    if fs.file_version != prior["file_version"] or fs.file_size != size or fs.checksum is None or \
            int(fs.checksum) & 0xFFFFFFFF != int(prior["ngas_checksum"]) & 0xFFFFFFFF:
        return None
    return records.ArchivedFile(
        name=item.name, product=plan.owner.get(item.name), locator=item.locator, role=item.product_type,
        ngas_file_id=item.file_id, file_version=prior["file_version"], size=size, mime_type=item.mime_type,
        checksums=dict(prior["checksums"]), ngas_checksum=prior["ngas_checksum"],
        ngas_checksum_plugin=prior["ngas_checksum_plugin"], ngas_disk_id=prior["ngas_disk_id"],
        uri=cfg.file_uri(item.file_id, prior["file_version"]))


def archived_file(cfg: NraoConfig, plan: Plan, item: ArchiveItem, result: ArchiveResult) -> records.ArchivedFile:
    return records.ArchivedFile(
        name=item.name, product=plan.owner.get(item.name), locator=item.locator, role=item.product_type,
        ngas_file_id=result.file_id, file_version=result.file_version, size=result.file_size,
        mime_type=item.mime_type, checksums=dict(result.digests), ngas_checksum=result.checksum,
        ngas_checksum_plugin=result.checksum_plugin, ngas_disk_id=result.disk_id,
        uri=cfg.file_uri(result.file_id, result.file_version))


# ---------------------------------------------------------------- 6. record


def record(cfg: NraoConfig, req: NraoRequest, ingest_id: int, staged: Staged, plan: Plan,
           archived: list[records.ArchivedFile]) -> list[dict[str, Any]]:
    ingest = cfg.registry.ingest_by_id(ingest_id)
    assert ingest is not None
    return records.record_group(
        cfg.registry, ingest=ingest, ingestion_type=req.kind.value, telescope=req.telescope.value,
        input_locator=staged.input_locator, manifest=plan.manifest.to_json(), science=plan.science,
        files=archived, images=plan.images, aux=staged.aux, reingest=req.reingest, ngas_url=cfg.ngas_url)


# ---------------------------------------------------------------- 7. notify, clean up


def publish(cfg: NraoConfig, routing_key: str, body: dict[str, Any], correlation_id: str | None) -> str:
    delivery = notify(Notification(exchange=cfg.exchange, routing_key=routing_key, body=body,
                                   correlation_id=correlation_id), cfg.transport)
    return delivery.transport


def report_completed(cfg: NraoConfig, req: NraoRequest, summary: dict[str, Any], ingest_id: int | None = None) -> str:
    """The run's terminal answer; the registry then says it went out (record_group left it "pending")."""
    body = {k: summary[k] for k in ("kind", "source", "state", "products", "files") if k in summary}
    transport = publish(cfg, COMPLETED_KEY, body, req.correlation_id)
    if ingest_id is not None:
        cfg.registry.set_state(ingest_id, "completed", details={"completion_notice": "sent"})
    return transport


def completion_unsent(cfg: NraoConfig, ingest_id: int | None, refused: records.AlreadyRecorded) -> bool:
    """Is this refusal really a run that died between recording its own products and announcing them?

    Then the products are this very request's (the refusal names only its group) and the registry
    still says its completion notice is pending: the answer owed is "completed", not a refusal."""
    if ingest_id is None:
        return False
    ingest = cfg.registry.ingest_by_id(ingest_id)
    return (ingest is not None and refused.groups == {ingest.natural_key}
            and (ingest.details or {}).get("completion_notice") == "pending")


def recorded_summary(cfg: NraoConfig, req: NraoRequest, staged: Staged) -> dict[str, Any]:
    """The completed run's summary, read back from the registry (what ``record`` wrote)."""
    group = natural_key(req, staged.source)
    products = cfg.registry.execute(
        "SELECT locator, product_type, filename FROM nrao_products WHERE product_group = %s ORDER BY id", (group,))
    files = cfg.registry.execute(
        "SELECT filename, ngas_file_id, file_version, size, checksums, ngas_checksum, ngas_checksum_plugin "
        "FROM nrao_product_files WHERE product_group = %s ORDER BY id", (group,))
    out = result_summary(req, "COMPLETED", staged=staged)
    out["products"] = [{"locator": p["locator"], "type": p["product_type"], "filename": p["filename"]}
                       for p in products]
    out["ngas_url"] = cfg.ngas_url
    out["files"] = [{"name": f["filename"], "ngas_file_id": f["ngas_file_id"], "version": f["file_version"],
                     "size": f["size"], "checksum": f"{f['ngas_checksum_plugin']}:{f['ngas_checksum']}",
                     "sha256": (f["checksums"] or {}).get("sha256")} for f in files]
    return out


def report_failure(cfg: NraoConfig, req: NraoRequest, ingest_id: int | None, reason: str, *,
                   user_error: bool, notify_status: bool = True, exc: BaseException | None = None) -> None:
    """Record the failure, then tell subscribers; a broken broker must not hide the original error.

    A request refused because its own products are already recorded is no failed ingest: its row
    stays ``completed`` (the refusal is still the run's answer)."""
    if ingest_id is not None:
        try:
            ingest = cfg.registry.ingest_by_id(ingest_id)
            if ingest is not None and isinstance(exc, records.AlreadyRecorded) and exc.groups == {ingest.natural_key}:
                cfg.registry.set_state(ingest_id, "completed")
            else:
                cfg.registry.set_state(ingest_id, "failed", error=reason,  # error_kind: for `status` (flows/status)
                                       details={"error_kind": "user" if user_error else "system"})
        except Exception as exc:  # the registry may be what failed
            log.warning("could not record the failure of ingest %s: %s", ingest_id, exc)
    if not notify_status:
        return
    try:
        publish(cfg, FAILED_KEY, {"kind": req.kind.value, "source": req.source,
                                  "state": "ERROR" if user_error else "FAILED", "error": reason},
                req.correlation_id)
    except Exception as exc:
        log.error("could not publish %s for %s: %s", FAILED_KEY, req.source, exc)


def cleanup(staged: Staged) -> None:
    shutil.rmtree(staged.product.staging_dir, ignore_errors=True)


# ---------------------------------------------------------------- summaries


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [{"name": i.name, "ngas_file_id": i.file_id, "role": i.product_type, "locator": i.locator,
             "mime_type": i.mime_type, "size": i.path.stat().st_size} for i in plan.items]


def result_summary(req: NraoRequest, state: str, *, staged: Staged | None = None, plan: Plan | None = None,
                   archived: list[records.ArchivedFile] | None = None, ngas_url: str | None = None,
                   error: str | None = None) -> dict[str, Any]:
    """The JSON line the CLI prints and the flow returns."""
    out: dict[str, Any] = {"kind": req.kind.value, "source": staged.source if staged else req.source,
                           "state": state, "reingest": req.reingest}
    if staged is not None:
        out["input_locator"] = staged.input_locator
        if state != "COMPLETED":  # a completed ingest's staging is removed; a plan's is kept to inspect
            out["staging_dir"] = str(staged.product.staging_dir)
            out["manifest"] = str(staged.product.staging_dir / MANIFEST_FILENAME)
    if plan is not None:
        out["products"] = [{"locator": s.locator, "type": s.product_type, "filename": s.filename}
                           for s in plan.science]
    if archived is not None:
        out["ngas_url"] = ngas_url
        out["files"] = [{"name": f.name, "ngas_file_id": f.ngas_file_id, "version": f.file_version,
                         "size": f.size, "checksum": f"{f.ngas_checksum_plugin}:{f.ngas_checksum}",
                         "sha256": f.checksums.get("sha256")} for f in archived]
    elif plan is not None:
        out["plan"] = plan_rows(plan)
    if error:
        out["error"] = error
    return out


# ---------------------------------------------------------------- broker topology


def setup_topology(amqp_url: str, exchange: str = "nrao") -> dict[str, Any]:
    """Declare the status exchange and a durable queue for both outcomes (safe to repeat)."""
    from tasks.notify import declare_topology

    declare_topology(amqp_url, [(exchange, "topic")], [TOPOLOGY_QUEUE], [(TOPOLOGY_QUEUE, exchange, "nrao.ingest.#")])
    return {"exchanges": [exchange], "queues": [TOPOLOGY_QUEUE], "bindings": [f"{exchange} -[nrao.ingest.#]-> "
                                                                               f"{TOPOLOGY_QUEUE}"]}


def ingest_events(cfg: NraoConfig, ingest_id: int | None) -> list[dict[str, Any]]:
    if ingest_id is None:
        return []
    try:
        return cfg.registry.events(ingest_id)
    except Exception:
        return []


def describe_error(exc: BaseException) -> str:
    return exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"

