"""Read a FITS cube's headers without touching its data, and decide whether the file changed.

SST cubes are tens of gigabytes; everything the archive needs up front (keywords,
extension names, checksums) lives in the headers, so the HDU list is opened lazily
and only headers are parsed. astropy is lenient with broken files: it replaces
non-ASCII bytes, parses unparsable cards only when asked and merely *warns* about
truncation. An archive must not store a silently altered header, so every card is
parsed here and those warnings become a ``UserError`` naming the problem.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.checksum import FitsCheck, HduChecksum, hash_file, verify_fits_checksums
from tasks.errors import UserError

# astropy warnings it merely reports, and so do we: a tab in a COMMENT/HISTORY card (a real Solar
# Orbiter SPICE L2 file has one) is "unprintable" to astropy's verify, which still reads the card as it is.
_TOLERATED_WARNINGS = ("commentary cards may only contain printable ASCII characters",)

# astropy warnings that mean the header on disk is not what we would store.
_FATAL_WARNINGS = (
    ("non-ASCII characters", "contains non-ASCII characters"),
    ("invalid or follows an unrecognized non-standard convention", "has a card that is not a valid FITS card"),
    ("Unfixable error", "has a card that is not a valid FITS card"),
    ("may have been truncated", "is truncated"),
)


@dataclass(frozen=True)
class HduInfo:
    index: int
    name: str           # EXTNAME, or PRIMARY
    header: object      # astropy.io.fits.Header (detached copy)
    header_offset: int
    data_offset: int
    data_size: int      # bytes declared by the header, unpadded


@dataclass(frozen=True)
class CubeHeaders:
    path: Path
    size: int
    hdus: tuple[HduInfo, ...]

    @property
    def primary(self):
        return self.hdus[0].header

    @property
    def extension_names(self) -> list[str]:
        return [h.name for h in self.hdus[1:]]

    def extension(self, name: str):
        """Header of the first extension called ``name`` (case-insensitive), or None."""
        wanted = name.upper()
        for hdu in self.hdus[1:]:
            if hdu.name.upper() == wanted:
                return hdu.header
        return None

    def hdu(self, name: str) -> HduInfo | None:
        wanted = name.upper()
        return next((h for h in self.hdus[1:] if h.name.upper() == wanted), None)


@dataclass(frozen=True)
class CubeFile:
    """Everything the flow needs before deciding to (re)ingest: headers, fixity and the change key."""

    headers: CubeHeaders
    checksums: tuple[HduChecksum, ...]
    change_key: str


def read_headers(path: str | Path) -> CubeHeaders:
    """Primary and extension headers, parsed card by card; the data units are never read."""
    from astropy.io import fits

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"cannot read FITS file {path.name}: {exc.strerror or exc}") from exc
    if size == 0:
        raise UserError(f"{path.name} is empty, not a FITS file")

    hdus: list[HduInfo] = []
    end_of_last = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, lazy_load_hdus=True, memmap=True, mode="readonly") as hdul:
                for index, hdu in enumerate(_iter_hdus(hdul, path)):
                    if index == 0:
                        _require_standard_primary(hdu, path)
                    header = hdu.header
                    _parse_every_card(header, path, index)
                    info = hdul.fileinfo(index)
                    hdus.append(HduInfo(
                        index=index,
                        name=(hdu.name or ("PRIMARY" if index == 0 else "")).strip(),
                        header=header.copy(),
                        header_offset=int(info["hdrLoc"]),
                        data_offset=int(info["datLoc"]),
                        data_size=_declared_data_size(hdu, int(info["datSpan"])),
                    ))
                    end_of_last = int(info["datLoc"]) + int(info["datSpan"])
        except UserError:
            raise
        except Exception as exc:  # astropy raises OSError, VerifyError, ValueError, ... for broken files
            raise UserError(f"{path.name} is not a readable FITS file: {_one_line(exc)}") from exc
    _raise_on_fatal_warnings(caught, path)

    if not hdus:
        raise UserError(f"{path.name} holds no HDU")
    last = hdus[-1]
    needed = last.data_offset + last.data_size
    if needed > size:
        raise UserError(
            f"{path.name} is truncated: its headers declare {needed} bytes but the file has {size}"
        )
    if size > end_of_last:
        # astropy silently ignores an extension whose header was cut off; we must not.
        with open(path, "rb") as fh:
            fh.seek(end_of_last)
            tail = fh.read(8)
        if tail == b"XTENSION":
            raise UserError(f"{path.name} is truncated: the extension after HDU {last.index} is incomplete")
    return CubeHeaders(path=path, size=size, hdus=tuple(hdus))


def verify_checksums(path: str | Path) -> tuple[HduChecksum, ...]:
    """CHECKSUM/DATASUM of every HDU; a mismatch is a corrupt or edited file, so a UserError."""
    results = tuple(verify_fits_checksums(path))
    for r in results:
        bad = [k for k, code in (("CHECKSUM", r.checksum), ("DATASUM", r.datasum)) if code is FitsCheck.FAILED]
        if bad:
            raise UserError(
                f"{Path(path).name}: {' and '.join(bad)} of HDU {r.index} ({r.name or 'PRIMARY'}) do not match "
                "its contents; the file is corrupt or was modified after it was written"
            )
    return results


def change_key(path: str | Path, checksums: tuple[HduChecksum, ...] | list[HduChecksum]) -> str:
    """A key that changes whenever the file's bytes do.

    When every HDU carries a verified CHECKSUM the stored values already cover all
    bytes, so reading the (huge) file again is unnecessary; otherwise we hash it.
    """
    if checksums and all(c.checksum is FitsCheck.OK and c.checksum_value for c in checksums):
        return "fits-checksum:" + ",".join(c.checksum_value for c in checksums)  # type: ignore[misc]
    return "sha256:" + hash_file(path, ("sha256",)).checksums["sha256"]


def inspect_cube(path: str | Path) -> CubeFile:
    """Headers, verified checksums and change key in one call: what the flow runs first."""
    headers = read_headers(path)
    checksums = verify_checksums(path)
    return CubeFile(headers=headers, checksums=checksums, change_key=change_key(path, checksums))


# ---------------------------------------------------------------- helpers


def _iter_hdus(hdul, path: Path) -> Iterator:
    index = 0
    while True:
        try:
            hdu = hdul[index]
        except IndexError:
            return
        yield hdu
        index += 1


def _parse_every_card(header, path: Path, index: int) -> None:
    """astropy parses card values lazily; force it so a bad card fails here, by name."""
    for position, card in enumerate(header.cards):
        try:
            _ = (card.keyword, card.value, card.comment)
        except Exception as exc:
            image = str(card.image if hasattr(card, "image") else card)[:80].rstrip()
            raise UserError(
                f"{path.name}: card {position} of HDU {index} is not a valid FITS card ({_one_line(exc)}): {image!r}"
            ) from exc


def _declared_data_size(hdu, span: int) -> int:
    """Bytes of the data unit as the header declares them (without the final 2880 padding).

    A compressed image HDU reports the *decompressed* size, so its stored binary
    table is asked instead (astropy keeps it as ``_bintable``); failing that the
    padded span astropy computed is the best bound we have.
    """
    from astropy.io import fits

    try:
        if isinstance(hdu, fits.CompImageHDU):
            table = getattr(hdu, "_bintable", None)
            return int(table.size) if table is not None else span
        return int(hdu.size)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"HDU {hdu.name or 'PRIMARY'} has an invalid data-size keyword: {_one_line(exc)}") from exc


def _require_standard_primary(hdu, path: Path) -> None:
    """``SIMPLE = F`` declares a file that does not follow the FITS standard; astropy opens it as a
    non-standard HDU that offers neither data nor offsets. Say so in words a person can act on."""
    from astropy.io.fits.hdu.base import _NonstandardHDU

    simple = hdu.header.get("SIMPLE")
    if isinstance(hdu, _NonstandardHDU) or simple is False:
        raise UserError(f"{path.name} is not a standard FITS file: its primary header says SIMPLE = F, which "
                        "declares that the file does not conform to the FITS standard, so the archive cannot "
                        "read it as FITS. Convert it to standard FITS (SIMPLE = T) before ingesting it")


def _raise_on_fatal_warnings(caught, path: Path) -> None:
    for w in caught:
        text = str(w.message)
        if any(tolerated in text for tolerated in _TOLERATED_WARNINGS):
            continue
        for needle, meaning in _FATAL_WARNINGS:
            if needle in text:
                raise UserError(f"{path.name} {meaning}: {_one_line(text)}")


def _one_line(exc_or_text) -> str:
    text = " ".join(str(exc_or_text).split())
    return text[:300]
