"""NRAO rows in the registry: science products, their archived NGAS file versions, image metadata.

A product is recorded only once NGAS has confirmed the CRC of every one of its files,
and all of it in one transaction, so the registry never lists a product whose files
are not all in NGAS. ``product_key`` (science type + file name) is how a second ingest
of the same product is recognised: refused unless it is a deliberate reingest.

Until then, the attempt's own rows (migration 041) hold the locators it gave out and every
file version NGAS confirmed, so a re-run after a failure or crash archives under the same
file ids and skips files NGAS already holds; NGAS cannot delete, and without these rows a
failed attempt's files would be recorded nowhere. Recording the product removes them, and
lists any confirmed version the product does not use in ``orphans`` (migration 060).
"""
from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from flows.nrao.fits_metadata import ImageMetadata
from tasks import registry as reg
from tasks.errors import UserError
from tasks.registry import Registry

DOMAIN = "nrao"
AGENT = "archive-ingest/nrao"


@dataclass(frozen=True)
class ArchivedFile:
    """One staged file as NGAS confirmed it (CRC and size checked)."""

    name: str                 # relative to the staging directory
    product: str | None       # the science product's file name; None for group-level ancillaries
    locator: str              # the science or ancillary product this file belongs to
    role: str                 # ScienceProductType / AncillaryProductType value
    ngas_file_id: str
    file_version: int
    size: int
    mime_type: str
    checksums: dict[str, str]  # ours, hex
    ngas_checksum: str
    ngas_checksum_plugin: str
    ngas_disk_id: str | None
    uri: str                  # where to read it back


@dataclass(frozen=True)
class ScienceEntry:
    filename: str
    product_type: str
    locator: str
    minted: bool              # a new locator (identifier assignment) rather than a recorded one


@dataclass
class Known:
    """What the registry already holds for the products being staged (for reingest)."""

    products: list[dict[str, Any]] = field(default_factory=list)
    by_name: dict[str, str] = field(default_factory=dict)   # staged file name → locator
    by_role: dict[str, str] = field(default_factory=dict)   # group ancillary type → locator


class AlreadyRecorded(UserError):
    """The request's science products are recorded and this is not a reingest."""

    def __init__(self, message: str, *, groups: Iterable[str] = ()) -> None:
        super().__init__(message, code="already_recorded")
        self.groups = frozenset(groups)  # the requests (natural keys) that recorded them


def product_key(product_type: str, filename: str) -> str:
    return f"{product_type}:{filename}"


def known_products(r: Registry, keys: Sequence[str]) -> Known:
    """Recorded products for these keys, with the locators their files had (newest version wins)."""
    known = Known()
    if not keys:
        return known
    known.products = r.execute("SELECT * FROM nrao_products WHERE product_key = ANY(%s) ORDER BY id", (list(keys),))
    if not known.products:
        return known
    ids = [p["id"] for p in known.products]
    groups = sorted({p["product_group"] for p in known.products})
    for p in known.products:
        known.by_name[p["filename"]] = p["locator"]
    rows = r.execute(
        "SELECT filename, locator, role, product_id FROM nrao_product_files "
        "WHERE product_id = ANY(%s) OR (product_id IS NULL AND product_group = ANY(%s)) "
        "ORDER BY file_version, id", (ids, groups))
    for row in rows:  # ascending, so the newest version's locator is the one kept
        known.by_name[row["filename"]] = row["locator"]
        if row["product_id"] is None:
            known.by_role[row["role"]] = row["locator"]
    return known


def known_products_readonly(r: Registry, keys: Sequence[str]) -> Known:
    """For a dry run: a registry never migrated holds nothing yet, which is not an error."""
    try:
        return known_products(r, keys)
    except psycopg.errors.UndefinedTable:
        return Known()


def record_group(r: Registry, *, ingest: reg.Ingest, ingestion_type: str, telescope: str, input_locator: str | None,
                 manifest: dict[str, Any], science: Sequence[ScienceEntry], files: Sequence[ArchivedFile],
                 images: dict[str, ImageMetadata], aux: dict[str, Any] | None, reingest: bool,
                 ngas_url: str) -> list[dict[str, Any]]:
    """Products, files, image metadata, shared ``files`` rows and PREMIS events, in one transaction."""
    group = ingest.natural_key
    rows: list[dict[str, Any]] = []
    with r.transaction():
        for sp in science:
            metadata: dict[str, Any] = {}
            if aux is not None:
                metadata["aux"] = aux
            if sp.filename in images:
                metadata["image"] = images[sp.filename].to_json()
            row = _upsert_product(r, sp, ingest=ingest, ingestion_type=ingestion_type, telescope=telescope,
                                  input_locator=input_locator, manifest=manifest, metadata=metadata,
                                  reingest=reingest)
            rows.append(row)
            if sp.filename in images:
                _upsert_image(r, row["id"], images[sp.filename])
        product_ids = {row["filename"]: row["id"] for row in rows}
        for f in files:
            _insert_file(r, f, product_ids.get(f.product) if f.product else None, group, ingest.id, ngas_url)
            r.upsert_file(DOMAIN, f"{f.ngas_file_id}@{f.file_version}", ingest_id=ingest.id, vault_uri=f.uri,
                          size=f.size, checksums={**f.checksums,
                                                  f"ngas_{f.ngas_checksum_plugin}": f.ngas_checksum})
            _file_events(r, ingest, f, ngas_url)
        for sp, row in zip(science, rows):
            version = max((f.file_version for f in files if f.product == sp.filename), default=1)
            if sp.minted:
                r.record_event(ingest, reg.IDENTIFIER_ASSIGNMENT, subject=sp.locator, agent=AGENT,
                               detail=f"{sp.product_type} {sp.filename}")
            n_files = sum(1 for f in files if f.product == sp.filename)
            r.record_event(ingest, reg.INGESTION, subject=sp.locator, agent=AGENT, discriminator=f"v{version}",
                           detail=f"{sp.product_type} {sp.filename}: {n_files} file(s) in NGAS "
                                  f"(ingest #{row['ingest_count']})")
        orphaned = settle_attempt(r, ingest, group, {(f.ngas_file_id, f.file_version) for f in files})
        # "pending" until notify-completed went out: a run killed in between must still announce it (steps)
        r.set_state(ingest.id, "completed", details={"locators": [sp.locator for sp in science],
                                                      "files": len(files), "orphaned_in_ngas": len(orphaned),
                                                      "completion_notice": "pending"})
    return rows


def _upsert_product(r: Registry, sp: ScienceEntry, *, ingest: reg.Ingest, ingestion_type: str, telescope: str,
                    input_locator: str | None, manifest: dict[str, Any], metadata: dict[str, Any],
                    reingest: bool) -> dict[str, Any]:
    key = product_key(sp.product_type, sp.filename)
    params = {"locator": sp.locator, "key": key, "itype": ingestion_type, "ptype": sp.product_type,
              "filename": sp.filename, "telescope": telescope, "input": input_locator, "group": ingest.natural_key,
              "ingest": ingest.id, "manifest": Jsonb(manifest), "metadata": Jsonb(metadata)}
    insert = """
        INSERT INTO nrao_products (locator, product_key, ingestion_type, product_type, filename, telescope,
                                   input_locator, product_group, ingest_id, manifest, metadata)
        VALUES (%(locator)s, %(key)s, %(itype)s, %(ptype)s, %(filename)s, %(telescope)s, %(input)s, %(group)s,
                %(ingest)s, %(manifest)s, %(metadata)s)
    """
    if not reingest:
        got = r.execute(insert + " ON CONFLICT DO NOTHING RETURNING *", params)
        if not got:  # recorded by someone else since the check at staging time
            raise AlreadyRecorded(already_recorded_message([key]))
        return got[0]
    return r.execute(insert + """
        ON CONFLICT (product_key) DO UPDATE SET
            ingestion_type = EXCLUDED.ingestion_type, telescope = EXCLUDED.telescope,
            input_locator = EXCLUDED.input_locator, product_group = EXCLUDED.product_group,
            ingest_id = EXCLUDED.ingest_id, manifest = EXCLUDED.manifest, metadata = EXCLUDED.metadata,
            ingest_count = nrao_products.ingest_count + 1, updated_at = now()
        RETURNING *
    """, params)[0]


def _upsert_image(r: Registry, product_id: int, m: ImageMetadata) -> None:
    cols = ["filename", "ra_deg", "dec_deg", "naxis1", "naxis2", "bmaj_deg", "bmin_deg", "bpa_deg",
            "resolution_arcsec", "beam_axial_ratio", "date_obs", "date_end", "freq_min_hz", "freq_max_hz",
            "channel_width_hz", "n_channels", "project", "polarizations", "telescope", "object"]
    values = m.to_json()
    r.execute(
        f"INSERT INTO nrao_images (product_id, {', '.join(cols)}) "
        f"VALUES (%(product_id)s, {', '.join(f'%({c})s' for c in cols)}) "
        f"ON CONFLICT (product_id) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in cols)}, "
        "updated_at = now()",
        {**{c: values[c] for c in cols}, "product_id": product_id})


def _insert_file(r: Registry, f: ArchivedFile, product_id: int | None, group: str, ingest_id: int,
                 ngas_url: str) -> None:
    r.execute(
        """
        INSERT INTO nrao_product_files (product_id, product_group, ingest_id, filename, locator, role,
            ngas_file_id, file_version, size, mime_type, checksums, ngas_checksum, ngas_checksum_plugin,
            ngas_disk_id, ngas_url)
        VALUES (%(pid)s, %(group)s, %(ingest)s, %(name)s, %(locator)s, %(role)s, %(fid)s, %(ver)s, %(size)s,
                %(mime)s, %(sums)s, %(crc)s, %(plugin)s, %(disk)s, %(url)s)
        ON CONFLICT (ngas_file_id, file_version) DO UPDATE SET
            product_id = EXCLUDED.product_id, product_group = EXCLUDED.product_group,
            ingest_id = EXCLUDED.ingest_id, filename = EXCLUDED.filename, locator = EXCLUDED.locator,
            role = EXCLUDED.role, size = EXCLUDED.size, mime_type = EXCLUDED.mime_type,
            checksums = EXCLUDED.checksums, ngas_checksum = EXCLUDED.ngas_checksum,
            ngas_checksum_plugin = EXCLUDED.ngas_checksum_plugin, ngas_disk_id = EXCLUDED.ngas_disk_id,
            ngas_url = EXCLUDED.ngas_url, updated_at = now()
        """,
        {"pid": product_id, "group": group, "ingest": ingest_id, "name": f.name, "locator": f.locator,
         "role": f.role, "fid": f.ngas_file_id, "ver": f.file_version, "size": f.size, "mime": f.mime_type,
         "sums": Jsonb(f.checksums), "crc": f.ngas_checksum, "plugin": f.ngas_checksum_plugin,
         "disk": f.ngas_disk_id, "url": ngas_url})


def _file_events(r: Registry, ingest: reg.Ingest, f: ArchivedFile, ngas_url: str) -> None:
    subject = f"{f.ngas_file_id}@{f.file_version}"
    for algo, value in sorted(f.checksums.items()):
        r.record_event(ingest, reg.DIGEST_CALCULATION, subject=subject, agent=AGENT, discriminator=algo,
                       detail=f"{f.name}: {algo} {value} (computed while streaming to NGAS)")
    r.record_event(ingest, reg.REPLICATION, subject=subject, agent=AGENT,
                   detail=f"{f.name} → NGAS {ngas_url} file {f.ngas_file_id} version {f.file_version}"
                          + (f" on disk {f.ngas_disk_id}" if f.ngas_disk_id else ""))
    r.record_event(ingest, reg.FIXITY_CHECK, subject=subject, agent=AGENT,
                   detail=f"NGAS {f.ngas_checksum_plugin}={f.ngas_checksum} matches ours; size {f.size}")


def already_recorded_message(keys: Iterable[str], locators: Iterable[str] = ()) -> str:
    what = ", ".join(keys)
    where = ", ".join(locators)
    return (f"already ingested: {what}" + (f" (as {where})" if where else "")
            + "; pass --reingest to archive new versions")


def group_files(r: Registry, locator: str) -> list[dict[str, Any]]:
    """Every archived file version of a product (its own and its group's), newest version first."""
    return r.execute(
        """
        SELECT f.* FROM nrao_product_files f JOIN nrao_products p
          ON f.product_id = p.id OR (f.product_id IS NULL AND f.product_group = p.product_group)
        WHERE p.locator = %s ORDER BY f.file_version DESC, f.id
        """, (locator,))


# ---------------------------------------------------------------- an attempt's own rows (until recorded)


def attempt_locators(r: Registry, group: str) -> dict[str, str]:
    """Slot (staged name, or ``role:<type>``) → locator, as an earlier attempt of this ingest gave them out."""
    rows = r.execute("SELECT slot, locator FROM nrao_attempt_locators WHERE product_group = %s", (group,))
    return {row["slot"]: row["locator"] for row in rows}


def attempt_locators_readonly(r: Registry, group: str) -> dict[str, str]:
    """For a dry run: a registry never migrated holds nothing yet."""
    try:
        return attempt_locators(r, group)
    except psycopg.errors.UndefinedTable:
        return {}


def save_attempt_locators(r: Registry, group: str, slots: Mapping[str, str]) -> dict[str, str]:
    """Keep this attempt's locators before anything is pushed; the first writer wins, and what is
    stored is returned, so two runs of one request at once still agree on every file id."""
    if slots:
        with r.transaction():
            for slot, locator in slots.items():
                r.execute("INSERT INTO nrao_attempt_locators (product_group, slot, locator) VALUES (%s, %s, %s) "
                          "ON CONFLICT (product_group, slot) DO NOTHING", (group, slot, locator))
    return attempt_locators(r, group)


def attempt_staged_at(r: Registry, group: str) -> datetime | None:
    """When an earlier attempt of this ingest staged the product (None: this is the first attempt)."""
    try:
        rows = r.execute("SELECT staged_at FROM nrao_attempt_stagings WHERE product_group = %s", (group,))
    except psycopg.errors.UndefinedTable:  # a dry run on a registry never migrated
        return None
    return rows[0]["staged_at"] if rows else None


def save_attempt_staged_at(r: Registry, group: str, when: datetime) -> datetime:
    """Keep the first attempt's staging time (the first writer wins); return the one kept."""
    r.execute("INSERT INTO nrao_attempt_stagings (product_group, staged_at) VALUES (%s, %s) "
              "ON CONFLICT (product_group) DO NOTHING", (group, when))
    return r.execute("SELECT staged_at FROM nrao_attempt_stagings WHERE product_group = %s", (group,))[0]["staged_at"]


def attempt_files(r: Registry, group: str) -> dict[str, dict[str, Any]]:
    """NGAS file id → the newest version an earlier attempt of this ingest had confirmed."""
    rows = r.execute("SELECT * FROM nrao_attempt_files WHERE product_group = %s ORDER BY file_version",
                     (group,))
    return {row["ngas_file_id"]: row for row in rows}


def save_attempt_file(r: Registry, group: str, ingest_id: int | None, f: ArchivedFile, ngas_url: str) -> None:
    """One file version NGAS has just confirmed (CRC and size): from now on it is on the books."""
    r.execute(
        """
        INSERT INTO nrao_attempt_files (ngas_file_id, file_version, product_group, ingest_id, filename, locator,
            role, size, mime_type, checksums, ngas_checksum, ngas_checksum_plugin, ngas_disk_id, ngas_url, uri)
        VALUES (%(fid)s, %(ver)s, %(group)s, %(ingest)s, %(name)s, %(locator)s, %(role)s, %(size)s, %(mime)s,
                %(sums)s, %(crc)s, %(plugin)s, %(disk)s, %(url)s, %(uri)s)
        ON CONFLICT (ngas_file_id, file_version) DO UPDATE SET product_group = EXCLUDED.product_group,
            ingest_id = EXCLUDED.ingest_id, filename = EXCLUDED.filename, size = EXCLUDED.size,
            checksums = EXCLUDED.checksums, ngas_checksum = EXCLUDED.ngas_checksum,
            ngas_checksum_plugin = EXCLUDED.ngas_checksum_plugin, uri = EXCLUDED.uri
        """,
        {"fid": f.ngas_file_id, "ver": f.file_version, "group": group, "ingest": ingest_id, "name": f.name,
         "locator": f.locator, "role": f.role, "size": f.size, "mime": f.mime_type, "sums": Jsonb(f.checksums),
         "crc": f.ngas_checksum, "plugin": f.ngas_checksum_plugin, "disk": f.ngas_disk_id, "url": ngas_url,
         "uri": f.uri})


def ngas_location(ngas_url: str, file_id: str, version: int) -> str:
    """How ``orphans`` names an NGAS file version: ``ngas://host:port/<file id>?version=N``."""
    host = urllib.parse.urlsplit(ngas_url).netloc or ngas_url
    return f"ngas://{host}/{file_id}?version={version}"


def settle_attempt(r: Registry, ingest: reg.Ingest, group: str, used: set[tuple[str, int]]) -> list[str]:
    """At record time (inside its transaction): the attempt's rows go; a confirmed version the product
    does not use (its file changed between attempts, or a timestamped artifact was rebuilt) stays in
    NGAS, which cannot delete, so it is listed in ``orphans`` with an event. Returns those locations."""
    from flows.reconcile.steps import record_orphan  # the one writer of the orphans table

    orphaned = []
    for row in r.execute("SELECT * FROM nrao_attempt_files WHERE product_group = %s ORDER BY ngas_file_id, "
                         "file_version", (group,)):
        if (row["ngas_file_id"], row["file_version"]) in used:
            continue
        location = ngas_location(row["ngas_url"], row["ngas_file_id"], row["file_version"])
        detail = (f"{row['filename']} version {row['file_version']}, archived by an earlier attempt of ingest "
                  f"#{ingest.id} ({group}) and not used by the recorded product")
        record_orphan(r, DOMAIN, location, detail, size=row["size"], ingest_id=ingest.id)
        r.record_event(ingest, reg.REPLICATION, subject=f"{row['ngas_file_id']}@{row['file_version']}", agent=AGENT,
                       outcome="orphaned", discriminator="orphan",
                       detail=f"{detail}; NGAS cannot delete it: listed as orphan {location}")
        orphaned.append(location)
    r.execute("DELETE FROM nrao_attempt_files WHERE product_group = %s", (group,))
    r.execute("DELETE FROM nrao_attempt_locators WHERE product_group = %s", (group,))
    r.execute("DELETE FROM nrao_attempt_stagings WHERE product_group = %s", (group,))
    return orphaned


def abandoned_attempt_files(r: Registry, older_than: timedelta) -> list[dict[str, Any]]:
    """NGAS file versions confirmed for an ingest that is no longer in progress (it failed, or its row is
    gone) and was not re-run within ``older_than``: NGAS files that belong to no recorded product. For
    reconcile, which lists them as orphans; a re-run of the request would still reuse them."""
    return r.execute(
        "SELECT f.*, i.state AS ingest_state, i.natural_key FROM nrao_attempt_files f "
        "LEFT JOIN ingests i ON i.id = f.ingest_id "
        "WHERE (i.id IS NULL OR i.state <> 'in_ingestion') AND f.created_at < now() - %s "
        "AND COALESCE(i.updated_at, f.created_at) < now() - %s ORDER BY f.created_at",
        (older_than, older_than))
