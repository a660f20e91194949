"""The Ingest Envoy's steps as plain functions, in the order a flow calls them.

1. ``setup_ingestion``: stage the products and write the manifest + ingestion artifacts.
2. ``archive_plan`` (manifest.py): every staged file with its NGAS file id.
3. ``archive_items``: push them to NGAS, verifying each CRC.
4. ``images_metadata``: FITS header metadata of every science image, for the registry.

Each step is safe to repeat: setup restages from scratch, and a re-archive of the
same file id only adds an NGAS version.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.nrao.collectors import COLLECTORS, StagedProduct
from flows.nrao.fits_metadata import ImageMetadata, image_metadata
from flows.nrao.manifest import ArchiveItem, IngestionManifest, finish_setup
from flows.nrao.ngas import ArchiveResult, NgasClient
from flows.nrao.products import IngestionType, ScienceProductType, Telescope


def setup_ingestion(kind: IngestionType | str, source_root: str | Path, source: str, staging_root: str | Path,
                    request_id: str, *, input_locator: str | None = None, telescope: Telescope | str = Telescope.EVLA,
                    reingest: bool = False, ngas_ingest: bool = True, calibrate: bool = False,
                    now: datetime | None = None, **collect_options: Any) -> tuple[StagedProduct, IngestionManifest]:
    """Stage ``<source_root>/<source>`` into ``<staging_root>/<request_id>`` and write the manifest."""
    kind = IngestionType(kind)
    staged = COLLECTORS[kind](source_root, source, staging_root, request_id, now=now, **collect_options)
    manifest = finish_setup(staged, telescope=telescope, input_locator=input_locator, reingest=reingest,
                            ngas_ingest=ngas_ingest, calibrate=calibrate)
    return staged, manifest


def archive_items(client: NgasClient, items: Iterable[ArchiveItem], *, extra_algorithms: tuple[str, ...] = (),
                  on_archived: Callable[[ArchiveItem, ArchiveResult], None] | None = None
                  ) -> list[tuple[ArchiveItem, ArchiveResult]]:
    """Archive in order; the first error propagates and nothing after it is attempted.

    ``on_archived`` runs after each verified file (record it there), so a failure
    never leaves a record for a file NGAS did not confirm.
    """
    done = []
    for item in items:
        result = client.archive(item.path, file_id=item.file_id, mime_type=item.mime_type,
                                extra_algorithms=extra_algorithms)
        if on_archived is not None:
            on_archived(item, result)
        done.append((item, result))
    return done


def images_metadata(staged: StagedProduct) -> dict[str, ImageMetadata]:
    """Header metadata of each science image (not of its ancillaries)."""
    return {sp.filename: image_metadata(staged.staging_dir / sp.filename)
            for sp in staged.science_products if sp.type is ScienceProductType.IMAGE}
