"""Demo input for the NRAO flow: a synthetic calibration run and the imaging run made from it.

With no NGAS URL in the block, products go to the local NGAS-compatible archive under
$INGEST_HOME/ngas (flows/nrao/local_ngas.py) over real HTTP, through the same client
code as a production NGAS. Every archived file is then read back (RETRIEVE) and its
sha256 compared with the one computed while it was sent.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

DEMO_EB_LOCATOR = "uid://evla/execblock/5f0c2a2e-8a5d-4c61-9d8e-0d3c7b1a2e40"


def _recorded(product_keys: list[str]) -> bool:
    from blocks.register import load_block
    from blocks.registry import RegistryBlock
    from flows.nrao.records import known_products

    with load_block(RegistryBlock).open() as registry:
        return bool(known_products(registry, product_keys).products)


def _verify(summary: dict[str, Any]) -> int:
    """Read every archived file back from NGAS; its sha256 must be the one we sent."""
    from blocks.ngas import NgasBlock
    from blocks.register import load_block

    with load_block(NgasBlock).client() as client, tempfile.TemporaryDirectory() as tmp:
        for f in summary["files"]:
            got = client.retrieve(f["ngas_file_id"], Path(tmp) / "copy", file_version=f["version"],
                                  algorithms=("sha256",))
            if got.digests["sha256"] != f["sha256"] or got.size != f["size"]:
                raise RuntimeError(f"NGAS returned a different {f['ngas_file_id']} v{f['version']}")
    return len(summary["files"])


def run_demo() -> dict[str, Any]:
    from blocks.ngas import NgasBlock
    from blocks.register import load_block
    from flows.nrao.cli import run_request
    from flows.nrao.samples import CAL_SOURCE, IMAGE_SOURCE, make_calibration_run, make_image_run

    block = load_block(NgasBlock)
    root = block.source_path()
    root.mkdir(parents=True, exist_ok=True)
    make_calibration_run(root)
    make_image_run(root)
    results: dict[str, Any] = {"source_root": str(root),
                               "ngas": block.url or f"local archive in {block.local_path()}"}
    cal_key = [f"calibration:{CAL_SOURCE}.tar"]
    code, cal = run_request({"kind": "calibration", "source": CAL_SOURCE, "input_locator": DEMO_EB_LOCATOR,
                             "reingest": _recorded(cal_key), "correlation_id": "demo"})
    if code:
        raise RuntimeError(f"NRAO calibration demo failed: {cal.get('error')}")
    cal_locator = cal["products"][0]["locator"]
    image_keys = [f"image:{Path(n).name}" for n in _image_names(root / IMAGE_SOURCE / "products")]
    code, img = run_request({"kind": "image", "source": IMAGE_SOURCE, "input_locator": cal_locator,
                             "reingest": _recorded(image_keys), "correlation_id": "demo"})
    if code:
        raise RuntimeError(f"NRAO image demo failed: {img.get('error')}")
    for name, summary in (("calibration", cal), ("image", img)):
        results[name] = {"products": summary["products"], "reingest": summary["reingest"],
                         "files": [f"{f['ngas_file_id']} v{f['version']}" for f in summary["files"]],
                         "verified_by_retrieve": _verify(summary)}
    return results


def _image_names(products: Path) -> list[str]:
    from flows.nrao.collectors import IMAGE_RULES, classify_images

    return [image for image, _ in classify_images((p.name for p in products.iterdir()), IMAGE_RULES)]

