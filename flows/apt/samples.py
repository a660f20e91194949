"""A small valid APTrust bag for the demo (and for anyone trying the flow): bagit-python
writes the bag, we add aptrust-info.txt and refresh the tag manifests, tarfile serialises it."""
from __future__ import annotations

import hashlib
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path

import bagit

SAMPLE_PAYLOAD = {
    "data/README.txt": b"A sample bag for the archive-ingest APT flow.\n",
    "data/records/metadata.xml": b"<?xml version='1.0'?>\n<record><title>Sample</title></record>\n",
    "data/records/table.csv": b"id,value\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(200)),
    "data/images/pixel.pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
}


def _write_tags(path: Path, tags: Iterable[tuple[str, str]]) -> None:
    path.write_text("".join(f"{k}: {v}\n" for k, v in tags), encoding="utf-8")


def _refresh_tag_manifests(bag_dir: Path) -> None:
    for tm in sorted(bag_dir.glob("tagmanifest-*.txt")):
        alg = tm.name[len("tagmanifest-"):-len(".txt")]
        lines = [f"{hashlib.new(alg, f.read_bytes()).hexdigest()}  {f.name}\n" for f in sorted(bag_dir.iterdir())
                 if f.is_file() and not f.name.startswith("tagmanifest-")]
        tm.write_text("".join(lines), encoding="utf-8")


def build_bag(work_dir: str | Path, bag_name: str, payload: dict[str, bytes] | None = None, *,
              title: str = "Sample bag", access: str = "Institution", storage_option: str | None = "Standard",
              checksums: Iterable[str] = ("md5", "sha256"), bag_info: dict[str, str] | None = None,
              extra_tag_files: dict[str, bytes] | None = None) -> Path:
    """Write ``<work_dir>/<bag_name>.tar`` holding a valid APTrust 2.3 bag; returns the tar path.

    ``payload`` maps paths *inside the bag* (``data/...``) to bytes.
    """
    work = Path(work_dir)
    bag_dir = work / bag_name
    if bag_dir.exists():
        shutil.rmtree(bag_dir)
    bag_dir.mkdir(parents=True)
    for rel, data in (payload if payload is not None else SAMPLE_PAYLOAD).items():
        if not rel.startswith("data/"):
            raise ValueError(f"payload paths start with data/: {rel!r}")
        target = bag_dir / rel[len("data/"):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    info = {"Source-Organization": "Example University", **(bag_info or {})}
    bagit.make_bag(str(bag_dir), info, checksums=list(checksums))
    tags = [("Title", title), ("Access", access)]
    if storage_option:
        tags.append(("Storage-Option", storage_option))
    _write_tags(bag_dir / "aptrust-info.txt", tags)
    for rel, data in (extra_tag_files or {}).items():
        (bag_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (bag_dir / rel).write_bytes(data)
    _refresh_tag_manifests(bag_dir)
    tar_path = work / f"{bag_name}.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(bag_dir, arcname=bag_name)
    shutil.rmtree(bag_dir)
    return tar_path
