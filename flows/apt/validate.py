"""Validate a scanned bag against its BagIt profile, in APTrust's words.

The checks and their order follow APTrust preservation-services
(``ingest/metadata_validator.go``): each stage runs only if the ones before it
passed, so a bag with no bagit.txt gets one clear error, not a cascade. The
messages are APTrust's, verbatim, because depositors and their tools already
know them. Two stages are ours: the tar directory name (APTrust enforces it in
its tar reader; the wording is APTrust's older bag validator's) and
Payload-Oxum, which APTrust skips and we check last, worded as bagit-python
does, so it is only reported when the file-level checks could not explain it.

bagit-python alone accepts bags APTrust rejects (no aptrust-info.txt, an
``Access: Hands Off!``), which is why the profile rules live here.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flows.apt.bagfiles import FileType, display_name
from flows.apt.names import BagName, parse_bag_name
from flows.apt.profile import Profile, judging_profile, load_profile
from flows.apt.tarscan import BagScan, FileRecord
from tasks.errors import UserError

__all__ = ["MAX_ERRORS", "ValidationResult", "load_profile", "validate_bag"]

MAX_ERRORS = 30  # APTrust constants.MaxValidationErrors
DEFAULT_ACCESS = "institution"
DEFAULT_STORAGE_OPTION = "Standard"


@dataclass
class ValidationResult:
    errors: list[str]
    profile: Profile | None
    bag: BagName
    profile_identifier: str = ""
    bagit_version: str | None = None
    access: str = DEFAULT_ACCESS  # lower case, as APTrust's registry stores it
    storage_option: str = DEFAULT_STORAGE_OPTION
    title: str = ""
    description: str = ""  # Description, else Internal-Sender-Description, else External-Description
    source_organization: str = ""
    internal_sender_identifier: str = ""
    internal_sender_description: str = ""
    bag_group_identifier: str = ""

    @property
    def valid(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        """UserError listing every error, for the flow to stop on."""
        if self.errors:
            raise UserError("; ".join(self.errors), code="invalid_bag")


@dataclass
class _Errors:
    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        if len(self.items) < MAX_ERRORS:
            self.items.append(message)
        elif len(self.items) == MAX_ERRORS:
            self.items.append("Too many errors")


def validate_bag(
    scan: BagScan,
    bag_name: str,
    *,
    institution: str | None = None,
    profile: Profile | str | None = None,
) -> ValidationResult:
    """Check ``scan`` as APTrust ingest does: BTR bags by BTR, every other bag by APTrust 2.3
    (``profile_identifier`` still records what the bag declared), or by ``profile`` if given.

    ``bag_name`` is the tar file name or the clean bag name; ``institution``
    (normally from the receiving bucket) prefixes file identifiers in messages,
    guessed from the bag name when omitted. Errors empty means valid.
    """
    bag = parse_bag_name(bag_name, institution)
    identifier = scan.tag("bag-info.txt", "BagIt-Profile-Identifier") or ""
    errors = _Errors()
    try:
        if isinstance(profile, str):
            profile = load_profile(profile)
        elif profile is None:
            profile = judging_profile(identifier)
    except UserError as exc:
        return ValidationResult(errors=[exc.message], profile=None, bag=bag, profile_identifier=identifier)

    tags = _effective_tags(scan, profile)
    stages = (
        lambda: _tar_dir_ok(scan, bag, profile, errors),
        lambda: _serialization_ok(scan, profile, errors),
        lambda: _bagit_version_ok(scan, profile, errors),
        lambda: _fetch_ok(scan, profile, errors),
        lambda: _allowed_ok("manifest", profile.manifests_allowed, scan.manifests, errors),
        lambda: _manifests_required_ok(scan, profile, errors),
        lambda: _allowed_ok("tag manifest", profile.tag_manifests_allowed, scan.tag_manifests, errors),
        lambda: _required_ok("tag manifest", profile.tag_manifests_required, scan.tag_manifests, errors),
        lambda: _required_tags_ok(tags, profile, errors),
        lambda: _existing_tags_ok(tags, profile, errors),
        lambda: _files_ok(scan, bag, errors),
        lambda: _payload_oxum_ok(scan, errors),
    )
    for stage in stages:
        if not stage():
            break
    return _result(scan, bag, profile, identifier, tags, errors.items)


# ------------------------------------------------------------------ stages


def _tar_dir_ok(scan: BagScan, bag: BagName, profile: Profile, errors: _Errors) -> bool:
    """A part of a multipart bag untars to its part name (``x.b01.of02``, as APTrust's own
    multipart bags and bagging rules have it); the clean name is accepted too."""
    if profile.tar_dir_must_match_name and scan.top_dir not in (bag.name, bag.directory):
        errors.add(f"Tarred bag should untar to directory '{bag.directory}', not '{display_name(scan.top_dir)}'")
        return False
    return True


def _serialization_ok(scan: BagScan, profile: Profile, errors: _Errors) -> bool:
    received = scan.serialization
    if profile.serialization == "forbidden" and received:
        errors.add(f"BagIt profile forbids serialization but bag is serialized in {received} format")
        return False
    if received and profile.accept_serialization and received not in profile.accept_serialization:
        errors.add(f"BagIt profile does not allow serialization format {received}")
        return False
    return True


def _bagit_version_ok(scan: BagScan, profile: Profile, errors: _Errors) -> bool:
    version = scan.tag("bagit.txt", "BagIt-Version")
    if not version:
        errors.add("Missing required tag bagit.txt/BagIt-Version.")
        return False
    if profile.accept_bagit_version and version not in profile.accept_bagit_version:
        errors.add(f"BagIt-Version {version} is not permitted in BagIt profile {profile.identifier}.")
        return False
    return True


def _fetch_ok(scan: BagScan, profile: Profile, errors: _Errors) -> bool:
    if scan.has_fetch_txt and not profile.allow_fetch_txt:
        errors.add("Bag has fetch.txt file which profile does not allow")
        return False
    return True


def _anything_goes(listed: Iterable[str]) -> bool:
    listed = tuple(listed)
    return not listed or "*" in listed


def _allowed_ok(kind: str, allowed: tuple[str, ...], present: Iterable[str], errors: _Errors) -> bool:
    if _anything_goes(allowed):
        return True
    ok = True
    for alg in present:
        if alg not in allowed:
            errors.add(f"Bag contains illegal {kind} '{alg}'")
            ok = False
    return ok


def _required_ok(kind: str, required: tuple[str, ...], present: Iterable[str], errors: _Errors) -> bool:
    if _anything_goes(required):
        return True
    present = set(present)
    ok = True
    for alg in required:
        if alg not in present:
            errors.add(f"Bag is missing required {kind} '{alg}'")
            ok = False
    return ok


def _manifests_required_ok(scan: BagScan, profile: Profile, errors: _Errors) -> bool:
    if not _required_ok("manifest", profile.manifests_required, scan.manifests, errors):
        return False
    if not scan.manifests:
        errors.add("Bag must have at least one payload manifest")
        return False
    return True


def _effective_tags(scan: BagScan, profile: Profile) -> list[tuple[str, str, str]]:
    """(file, name, value) for every tag in the bag, plus APTrust's Storage-Option default.

    APTrust announced that a missing Storage-Option means Standard and injects it
    before validation (MetadataGatherer.setMissingDefaultTags); so do we.
    """
    tags = [(f, n, v) for f, pairs in scan.tags.items() for n, v in pairs]
    if profile.is_aptrust and scan.tag("aptrust-info.txt", "Storage-Option") is None:
        tags.append(("aptrust-info.txt", "Storage-Option", DEFAULT_STORAGE_OPTION))
    return tags


def _required_tags_ok(tags: list[tuple[str, str, str]], profile: Profile, errors: _Errors) -> bool:
    present = {(f, n.lower()) for f, n, _ in tags}
    ok = True
    for tag_def in profile.tags:
        if tag_def.required and (tag_def.tag_file, tag_def.tag_name.lower()) not in present:
            errors.add(f"Required tag {tag_def.tag_name} in file {tag_def.tag_file} is missing")
            ok = False
    return ok


def _existing_tags_ok(tags: list[tuple[str, str, str]], profile: Profile, errors: _Errors) -> bool:
    ok = True
    for tag_file, name, value in tags:
        tag_def = profile.tag_def(tag_file, name)
        if tag_def is None:
            continue
        if tag_def.required and value == "":
            errors.add(f"In file {tag_file}, required tag {name} has no value")
            ok = False
        elif not tag_def.is_legal(value):  # as APTrust: an empty value is not in a values list
            errors.add(f"In file {tag_file}, tag {name} has illegal value '{value}'")
            ok = False
    return ok


def _files_ok(scan: BagScan, bag: BagName, errors: _Errors) -> bool:
    """Names, then every manifest entry against the digest computed at ingest.

    As in RFC 8493 §2.2.1 and APTrust: every payload file must be in every
    payload manifest, every payload manifest must be in every tag manifest, and
    other tag files may be left out of tag manifests but must match if listed.
    """
    ok = True
    for message in scan.name_errors.values():
        errors.add(message)
        ok = False
    manifest_sets = [
        (f"manifest-{alg}.txt", alg, entries, FileType.PAYLOAD) for alg, entries in scan.manifests.items()
    ] + [
        (f"tagmanifest-{alg}.txt", alg, entries, FileType.MANIFEST) for alg, entries in scan.tag_manifests.items()
    ]
    for record in scan.files.values():
        for manifest_name, alg, entries, required_type in manifest_sets:
            if not _checksum_ok(record, bag, manifest_name, alg, entries.get(record.path), required_type, errors):
                ok = False
    for manifest_name, _alg, entries, _ in manifest_sets:
        for path in entries:
            if path not in scan.files:
                errors.add(f"File {bag.file_identifier(display_name(path))} in {manifest_name} is missing from bag")
                ok = False
    return ok


def _checksum_ok(
    record: FileRecord,
    bag: BagName,
    manifest_name: str,
    alg: str,
    listed: str | None,
    required_type: FileType,
    errors: _Errors,
) -> bool:
    ident = bag.file_identifier(display_name(record.path))
    if listed is None:
        if record.file_type is required_type:
            errors.add(f"File {ident} is not in manifest {manifest_name}")
            return False
        return True
    computed = record.checksums.get(alg)
    if computed is None:
        raise ValueError(f"the scan did not compute {alg}, which {manifest_name} needs")
    if computed != listed:
        errors.add(f"File {ident}: ingest {alg} checksum {computed} doesn't match manifest checksum {listed}")
        return False
    return True


def _payload_oxum_ok(scan: BagScan, errors: _Errors) -> bool:
    oxum = scan.tag("bag-info.txt", "Payload-Oxum")
    if oxum is None:
        return True
    octets, _, count = oxum.strip().partition(".")
    if not (octets.isdigit() and count.isdigit()):
        errors.add(f"Malformed Payload-Oxum value: {oxum}")
        return False
    found_bytes, found_files = scan.payload_oxum()
    if int(octets) != found_bytes or int(count) != found_files:
        errors.add(
            f"Payload-Oxum validation failed. Expected {int(count)} files and {int(octets)} bytes"
            f" but found {found_files} files and {found_bytes} bytes"
        )
        return False
    return True


# ------------------------------------------------------------------ result


def _result(
    scan: BagScan,
    bag: BagName,
    profile: Profile,
    identifier: str,
    tags: list[tuple[str, str, str]],
    errors: list[str],
) -> ValidationResult:
    def first(tag_file: str, name: str) -> str:
        wanted = name.lower()
        return next((v for f, n, v in tags if f == tag_file and n.lower() == wanted and v), "")

    access_def = profile.tag_def("aptrust-info.txt", "Access")
    access = first("aptrust-info.txt", "Access")
    access = (access_def.canonical(access) if access_def and access else None) or DEFAULT_ACCESS
    storage_def = profile.tag_def("aptrust-info.txt", "Storage-Option")
    storage = first("aptrust-info.txt", "Storage-Option")
    storage = (storage_def.canonical(storage) if storage_def and storage else None) or DEFAULT_STORAGE_OPTION
    internal_description = first("bag-info.txt", "Internal-Sender-Description")
    return ValidationResult(
        errors=errors,
        profile=profile,
        bag=bag,
        profile_identifier=identifier or profile.identifier,
        bagit_version=scan.tag("bagit.txt", "BagIt-Version"),
        access=access.lower(),
        storage_option=storage,
        title=first("aptrust-info.txt", "Title"),
        description=first("aptrust-info.txt", "Description")
        or internal_description
        or first("bag-info.txt", "External-Description"),
        source_organization=first("bag-info.txt", "Source-Organization"),
        internal_sender_identifier=first("bag-info.txt", "Internal-Sender-Identifier"),
        internal_sender_description=internal_description,
        bag_group_identifier=first("bag-info.txt", "Bag-Group-Identifier"),
    )
