"""Re-verify one stored object per domain, as plain functions: what each archive promised to keep.

Every check reads the bytes (or, for NGAS, has the server read them) and compares with what the
registry recorded at ingest. A wrong byte is a ``mismatch``, an absent object a ``missing``; both
are outcomes to record, not exceptions. Anything else (a storage outage, a refused connection) is
raised: the batch is retried, and nothing is blamed on the object.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from flows.fixity.plan import Item
from tasks.vault import VaultVerifyError

log = logging.getLogger(__name__)

SUCCESS, FAILURE = "success", "failure"
MISMATCH, MISSING = "mismatch", "missing"


@dataclass
class Outcome:
    item: Item
    outcome: str  # success | failure
    detail: str  # what was compared (the PREMIS event's detail)
    problem: str | None = None  # mismatch | missing
    outcome_detail: str | None = None  # what was found
    bytes_read: int = 0

    @property
    def failed(self) -> bool:
        return self.outcome != SUCCESS


@dataclass
class Resources:
    """What checks need, opened once per batch: vaults, the APT targets, the NGAS client."""

    vault: Any = None  # tasks.vault.Vault (EGA)
    apt_target: Callable[[str], Any] | None = None  # target name → Vault
    ngas: Any = None  # flows.nrao.ngas.NgasClient
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            try:
                close()
            except Exception:
                log.debug("closing a fixity resource failed", exc_info=True)


def _vault_problem(exc: VaultVerifyError) -> str:
    return MISSING if exc.actual.get("size", 0) is None or "missing" in str(exc) or "vanished" in str(exc) \
        else MISMATCH


# ---------------------------------------------------------------- EGA


def check_ega(item: Item, res: Resources) -> Outcome:
    """The Crypt4GH object in the vault (filesystem or S3): size, then every byte against the recorded sha256."""
    p = item.payload
    detail = f"vault object {p['key']} sha256 {p['sha256']} size {p['size']}"
    vault, key = _recorded_location(res.vault, p["key"], p.get("uri"))
    if vault is None:
        return Outcome(item, FAILURE, detail, MISSING, f"{p.get('uri')}: object is missing (so is its directory)")
    try:
        result = vault.verify(key, size=int(p["size"]), sha256=p["sha256"])
    except VaultVerifyError as exc:
        return Outcome(item, FAILURE, detail, _vault_problem(exc), str(exc),
                       bytes_read=0 if _vault_problem(exc) == MISSING else int(p["size"]))
    return Outcome(item, SUCCESS, detail, outcome_detail=f"sha256 {result.checksums['sha256']} read back from "
                   f"{result.uri}", bytes_read=result.size)


def _recorded_location(vault: Any, key: str, uri: str | None) -> tuple[Any, str]:
    """The configured vault, unless the registry recorded the object elsewhere (the vault block was changed
    since): then where it was recorded, so a moved configuration is never reported as lost objects."""
    from tasks.vault import FilesystemVault, S3Vault, check_key

    if not uri or vault.uri(key) == uri:
        return vault, key
    parts = urlsplit(uri)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if not path.parent.is_dir():  # gone with its directory; a vault here would recreate the directory
            return None, key
        return FilesystemVault(path.parent), check_key(path.name)
    if parts.scheme == "s3" and isinstance(vault, S3Vault):
        return S3Vault(parts.netloc, client=vault.client), check_key(parts.path.lstrip("/"))
    return vault, key


# ---------------------------------------------------------------- APT


def check_apt(item: Item, res: Resources) -> Outcome:
    """Every copy on every storage target, against the recorded sha256 and md5 (one read per copy)."""
    from flows.apt.storage import verify_copy

    p = item.payload
    copies = p.get("copies") or []
    detail = (f"{len(copies)} cop{'y' if len(copies) == 1 else 'ies'} of {p['identifier']} "
              f"({', '.join(c['target'] for c in copies) or 'none recorded'}): sha256 {p.get('sha256')}"
              + (f", md5 {p['md5']}" if p.get("md5") else ""))
    if not copies:
        return Outcome(item, FAILURE, detail, MISSING, "no storage record: no copy is known")
    problems: list[tuple[str, str]] = []
    read = 0
    for copy in copies:
        vault = res.apt_target(copy["target"])
        sha256 = p.get("sha256") or copy.get("sha256")
        try:
            verify_copy(vault, p["uuid"], size=int(p["size"]), sha256=sha256, md5=p.get("md5"))
            read += int(p["size"])
        except VaultVerifyError as exc:
            problem = _vault_problem(exc)
            problems.append((problem, f"{copy['target']}: {exc}"))
            read += 0 if problem == MISSING else int(p["size"])
    if problems:
        kind = MISSING if any(k == MISSING for k, _ in problems) else MISMATCH
        return Outcome(item, FAILURE, detail, kind, "; ".join(m for _, m in problems), bytes_read=read)
    return Outcome(item, SUCCESS, detail, outcome_detail=f"{len(copies)} copies match", bytes_read=read)


# ---------------------------------------------------------------- FITS


def _local_path(uri: str | None) -> Path | None:
    if not uri:
        return None
    parts = urlsplit(uri)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


def check_fits(item: Item, res: Resources) -> Outcome:
    """CHECKSUM and DATASUM of every HDU, the recorded CHECKSUM values, and the recorded file hash (sha256).

    The change key of a re-ingest comes from the headers, so a flipped data byte under an unchanged
    CHECKSUM card is invisible to it; DATASUM recomputed from the data is what finds it.
    """
    from tasks.checksum import FitsCheck, hash_file, verify_fits_checksums
    from tasks.errors import UserError

    p = item.payload
    recorded = p.get("checksums") or {}
    path = _local_path(p.get("uri"))
    if p.get("uri") is None:  # no files row: the cube's path under the default science root
        from flows.fits.steps import default_science_root

        path = default_science_root() / p["path"]
    hdu_values = {k: v for k, v in recorded.items() if k.startswith("fits-checksum-")}
    detail = (f"{p['path']}: CHECKSUM/DATASUM per HDU ({len(hdu_values)} recorded)"
              + (f", sha256 {recorded['sha256']}" if recorded.get("sha256") else "") + f", size {p['size']}")
    if path is None:
        return Outcome(item, FAILURE, detail, MISSING, f"no local file recorded for {p['oid']} ({p.get('uri')})")
    if not path.is_file():
        return Outcome(item, FAILURE, detail, MISSING, f"{path} is missing")
    problems: list[str] = []
    size = path.stat().st_size
    if size != int(p["size"]):
        problems.append(f"size is {size}, expected {p['size']}")
    if recorded.get("sha256"):
        actual = hash_file(path, ("sha256",)).checksums["sha256"]
        if actual != recorded["sha256"]:
            problems.append(f"sha256 {actual} != recorded {recorded['sha256']}")
    try:
        hdus = verify_fits_checksums(path)
    except UserError as exc:
        problems.append(exc.message)
        hdus = []
    for h in hdus:
        bad = [k for k, code in (("CHECKSUM", h.checksum), ("DATASUM", h.datasum)) if code is FitsCheck.FAILED]
        if bad:
            problems.append(f"{' and '.join(bad)} of HDU {h.index} ({h.name or 'PRIMARY'}) do not match its contents")
        want = hdu_values.get(f"fits-checksum-{h.index}")
        if want and h.checksum_value != want:
            problems.append(f"CHECKSUM card of HDU {h.index} is {h.checksum_value!r}, recorded {want!r}")
    if hdus and len(hdus) < len(hdu_values):
        problems.append(f"{len(hdus)} HDUs, {len(hdu_values)} recorded")
    if problems:
        return Outcome(item, FAILURE, detail, MISMATCH, "; ".join(problems), bytes_read=size)
    return Outcome(item, SUCCESS, detail, outcome_detail=f"{len(hdus)} HDUs verified", bytes_read=size)


# ---------------------------------------------------------------- NRAO


def check_nrao(item: Item, res: Resources) -> Outcome:
    """NGAS ``CHECKFILE`` of the recorded file id and version (NGAS re-reads its copy against its own CRC),
    then the CRC NGAS holds against the one we computed while streaming the file in."""
    from flows.nrao.ngas import NgasFailure, crc_algorithm, crc_matches

    p = item.payload
    file_id, version = p["file_id"], int(p["version"])
    detail = f"NGAS CHECKFILE {file_id} version {version}; CRC {p['ngas_checksum']} ({p['plugin']}), size {p['size']}"
    check = res.ngas.checkfile(file_id, version)
    if not check.ok:
        missing = "UNAVAIL" in check.message or "not found" in check.message.lower()
        return Outcome(item, FAILURE, detail, MISSING if missing else MISMATCH, f"CHECKFILE: {check.message}",
                       bytes_read=0 if missing else int(p["size"]))
    problems: list[str] = []
    try:
        status = res.ngas.file_status(file_id, version)
    except NgasFailure as exc:
        return Outcome(item, FAILURE, detail, MISSING, f"STATUS: {exc.message}", bytes_read=int(p["size"]))
    if status.file_version != version:
        problems.append(f"NGAS lists version {status.file_version}, not {version}")
    if status.file_size != int(p["size"]):
        problems.append(f"NGAS size {status.file_size}, recorded {p['size']}")
    if str(status.checksum) != str(p["ngas_checksum"]) and not _same_int(status.checksum, p["ngas_checksum"]):
        problems.append(f"NGAS CRC {status.checksum}, recorded {p['ngas_checksum']}")
    ours = (p.get("checksums") or {}).get(_algorithm(crc_algorithm, p["plugin"]) or "")
    if ours and not crc_matches(p["plugin"], str(status.checksum), ours):
        problems.append(f"NGAS CRC {status.checksum} is not ours ({ours})")
    if problems:
        return Outcome(item, FAILURE, detail, MISMATCH, "; ".join(problems), bytes_read=int(p["size"]))
    return Outcome(item, SUCCESS, detail, outcome_detail=f"CHECKFILE: {check.message}", bytes_read=int(p["size"]))


def _algorithm(lookup: Callable[[str], str], plugin: str) -> str | None:
    try:
        return lookup(plugin)
    except Exception:  # noqa: BLE001 - a plug-in we cannot verify ourselves: NGAS's word stands
        return None


def _same_int(a: Any, b: Any) -> bool:
    try:
        return int(str(a).strip()) & 0xFFFFFFFF == int(str(b).strip()) & 0xFFFFFFFF
    except ValueError:
        return False


CHECKS: dict[str, Callable[[Item, Resources], Outcome]] = {
    "ega": check_ega, "apt": check_apt, "fits": check_fits, "nrao": check_nrao,
}
