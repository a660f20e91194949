"""PRONOM identification with the embedded Siegfried, and the extension fallback."""
from __future__ import annotations

import os
import struct
import uuid
import zlib
from pathlib import Path

from flows.apt.formats import DEFAULT_MIME, identify_file, identify_files


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
TEXT = b"Plain text, the way a README is written.\nSecond line.\n"


def _staged(tmp_path: Path, data: bytes) -> Path:
    """Staging keeps files under UUID names, so identification cannot lean on extensions."""
    path = tmp_path / uuid.uuid4().hex
    path.write_bytes(data)
    return path


def test_identifies_pdf_png_and_text_by_content_in_one_call(tmp_path: Path) -> None:
    paths = [_staged(tmp_path, d) for d in (PDF, _png(), TEXT)]
    pdf, png, text = identify_files(paths, names=["data/report.pdf", "data/pixel.png", "data/README"])
    assert [r.path for r in (pdf, png, text)] == [str(p) for p in paths]
    assert pdf.puid == "fmt/18" and pdf.mime == "application/pdf"  # PDF 1.4, from its header
    assert png.puid in ("fmt/11", "fmt/12", "fmt/13") and png.mime == "image/png"
    assert text.puid == "x-fmt/111" and text.mime == "text/plain"
    for r in (pdf, png, text):
        assert r.identified_by.startswith("siegfried ") and r.basis and r.format_name


def test_content_wins_over_a_wrong_extension(tmp_path: Path) -> None:
    path = tmp_path / "looks_like.txt"
    path.write_bytes(PDF)
    result = identify_file(path)
    assert result.mime == "application/pdf" and "mismatch" in result.warning


def test_unknown_content_falls_back_to_the_original_name(tmp_path: Path) -> None:
    blob = os.urandom(4096)
    paths = [_staged(tmp_path, blob), _staged(tmp_path, blob)]
    csv, unknown = identify_files(paths, names=["data/table.csv", "data/blob"])
    assert csv.puid is None and csv.mime == "text/csv" and csv.identified_by == "mimetypes"
    assert unknown.puid is None and unknown.mime == DEFAULT_MIME and unknown.identified_by == "default"


def test_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    result = identify_file(tmp_path / "gone.pdf")
    assert result.puid is None and result.mime == "application/pdf" and "no such file" in result.warning


def test_empty_batch() -> None:
    assert identify_files([]) == []
