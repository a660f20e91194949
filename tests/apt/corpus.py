"""A small corpus of tarred bags, good and bad, built with bagit-python + tarfile.

Each bag is a few KB. The bad ones mirror APTrust preservation-services' own
test bags (``testdata/unit_test_bags``) and carry the exact error text APTrust
reports for them; digests and sizes in expected messages are computed here from
the bytes we wrote, never copied from our own validator's output.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import bagit

INSTITUTION = "example.edu"
APTRUST_23 = "https://raw.githubusercontent.com/APTrust/preservation-services/master/profiles/aptrust-v2.3.json"
APTRUST_22 = "https://raw.githubusercontent.com/APTrust/preservation-services/master/profiles/aptrust-v2.2.json"
BTR = "https://raw.githubusercontent.com/dpscollaborative/btr_bagit_profile/master/btr-bagit-profile.json"
DART_BTR = "https://raw.githubusercontent.com/APTrust/dart/master/profiles/btr-v0.1.json"

# APTrust's sample bags hold Fedora datastreams under these names.
APT_PAYLOAD = {
    "datastream-DC": b"<oai_dc:dc><dc:title>Sample</dc:title></oai_dc:dc>\n" * 3,
    "datastream-MARC": b"00714cam a2200205 a 4500" * 10,
    "datastream-RELS-EXT": b"<rdf:RDF><rdf:Description/></rdf:RDF>\n",
    "datastream-descMetadata": b"<mods><titleInfo><title>Sample</title></titleInfo></mods>\n" * 5,
}
BTR_PAYLOAD = {
    "netutil/listen.go": b"package netutil\n\nfunc Listen() {}\n" * 4,
    "nsqadmin/README.md": b"# nsqadmin\n\nAdmin UI.\n",
    "nsqd/nsqd.go": b"package nsqd\n" * 20,
}
GOOD_APT_INFO = [("Title", "Sample Good Bag"), ("Access", "Institution"), ("Storage-Option", "Standard"),
                 ("Description", "A bag APTrust accepts.")]


@dataclass
class Case:
    key: str
    tar: Path
    bag_name: str  # the tar file name, as received
    errors: list[str] | None = None  # exact validation errors ([] = valid); None for scan failures
    scan_error: str | None = None  # exact UserError text (or a fragment, with scan_error_exact=False)
    scan_error_exact: bool = True
    profile: str | None = None  # forced profile key, when the bag cannot name one itself
    institution: str = INSTITUTION
    payload: dict[str, bytes] = field(default_factory=dict)  # path in bag → bytes, for oracles
    ordered: bool = True  # False: per-file errors whose order is not part of the contract


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_tag_file(path: Path, tags: Iterable[tuple[str, str]]) -> None:
    path.write_text("".join(f"{k}: {v}\n" for k, v in tags), encoding="utf-8")


def rewrite_tag_manifests(bag_dir: Path) -> None:
    """Regenerate every tagmanifest-<alg>.txt over the top-level files, after tag edits."""
    for tm in sorted(bag_dir.glob("tagmanifest-*.txt")):
        alg = tm.name[len("tagmanifest-"):-len(".txt")]
        lines = []
        for f in sorted(bag_dir.iterdir()):
            if f.is_file() and not f.name.startswith("tagmanifest-"):
                lines.append(f"{hashlib.new(alg, f.read_bytes()).hexdigest()}  {f.name}\n")
        tm.write_text("".join(lines), encoding="utf-8")


def make_bag(root: Path, dirname: str, *, payload: dict[str, bytes], checksums: Iterable[str] = ("md5", "sha256"),
             bag_info: Iterable[tuple[str, str]] | None = None,
             aptrust_info: Iterable[tuple[str, str]] | None = GOOD_APT_INFO) -> Path:
    bag_dir = root / dirname
    bag_dir.mkdir(parents=True)
    for rel, data in payload.items():
        target = bag_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    info = dict(bag_info) if bag_info is not None else {"Source-Organization": "Example University"}
    bagit.make_bag(str(bag_dir), info, checksums=list(checksums))
    if aptrust_info is not None:
        write_tag_file(bag_dir / "aptrust-info.txt", aptrust_info)
    rewrite_tag_manifests(bag_dir)
    return bag_dir


def set_bag_info(bag_dir: Path, changes: dict[str, str | None]) -> None:
    """Change or add (a value) or drop (None) bag-info.txt tags; tag manifests follow."""
    path = bag_dir / "bag-info.txt"
    tags = [line.split(": ", 1) for line in path.read_text().splitlines() if line.strip()]
    out = [(k, changes.get(k, v)) for k, v in tags if changes.get(k, "") is not None]
    out += [(k, v) for k, v in changes.items() if v is not None and k not in {t[0] for t in tags}]
    write_tag_file(path, out)
    rewrite_tag_manifests(bag_dir)


def tar_bag(bag_dir: Path, tar_path: Path, arcname: str | None = None) -> Path:
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(bag_dir, arcname=arcname or bag_dir.name)
    return tar_path


def raw_tar(tar_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A tar with hand-made members (links, devices, '..'), which no bagger would write."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return tar_path


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_700_000_000
    return info


def payload_paths(payload: dict[str, bytes]) -> dict[str, bytes]:
    return {f"data/{k}": v for k, v in payload.items()}


def build_corpus(root: Path) -> dict[str, Case]:
    """Every case, keyed by name. ``root`` is a scratch directory (a few hundred KB)."""
    bags = root / "bags"
    tars = root / "tars"
    tars.mkdir(parents=True)
    cases: dict[str, Case] = {}

    def add(key: str, bag_dir: Path, tar_name: str, *, arcname: str | None = None, **kw) -> Case:
        case = Case(key=key, tar=tar_bag(bag_dir, tars / tar_name, arcname), bag_name=tar_name, **kw)
        cases[key] = case
        return case

    def apt(dirname: str, *, payload: dict[str, bytes] = APT_PAYLOAD, **kw) -> Path:
        return make_bag(bags, dirname, payload=payload, **kw)

    def ident(bag: str, path: str) -> str:
        return f"{INSTITUTION}/{bag}/{path}"

    # ---------------------------------------------------------------- valid bags
    d = apt("example.edu.sample_good")
    add("good_aptrust", d, "example.edu.sample_good.tar", errors=[], payload=payload_paths(APT_PAYLOAD))

    d = apt("example.edu.sample_glacier_deep_or",
            aptrust_info=[("Title", "Deep"), ("Access", "consortia"), ("Storage-Option", "glacier-deep-or")])
    add("good_glacier_deep_or", d, "example.edu.sample_glacier_deep_or.tar", errors=[])

    d = apt("example.edu.sample_no_storage_option",
            aptrust_info=[("Title", "Default storage"), ("Access", "Restricted")])
    add("good_default_storage", d, "example.edu.sample_no_storage_option.tar", errors=[])

    for alg in ("sha256", "sha512"):
        d = make_bag(bags, f"btr_good_{alg}", payload=BTR_PAYLOAD, checksums=[alg], aptrust_info=None,
                     bag_info=[("Source-Organization", "Example University"), ("BagIt-Profile-Identifier", BTR)])
        add(f"good_btr_{alg}", d, f"btr_good_{alg}.tar", errors=[], payload=payload_paths(BTR_PAYLOAD))

    for part in (1, 2):  # as APTrust's own: each part untars to its part name
        d = apt(f"example.edu.multipart.b0{part}.of02",
                payload={f"part{part}-{k}": v for k, v in APT_PAYLOAD.items()})
        add(f"multipart_b0{part}", d, f"example.edu.multipart.b0{part}.of02.tar", errors=[])
    d = apt("clean/example.edu.multipart_clean", payload={"part1-x.txt": b"x\n"})
    add("multipart_clean_dir", d, "example.edu.multipart_clean.b01.of02.tar", errors=[])

    # APTrust judges every non-BTR bag by its current profile (2.3), whatever the bag names
    d = apt("example.edu.wasabi_tx", bag_info=[("Source-Organization", "Example University"),
                                                ("BagIt-Profile-Identifier", APTRUST_22)],
            aptrust_info=[("Title", "Wasabi"), ("Access", "Institution"), ("Storage-Option", "Wasabi-TX")])
    add("wasabi_tx_declares_v22", d, "example.edu.wasabi_tx.tar", errors=[])
    cases["wasabi_tx_forced_v22"] = Case(
        "wasabi_tx_forced_v22", cases["wasabi_tx_declares_v22"].tar, "example.edu.wasabi_tx.tar",
        profile="aptrust-2.2", errors=["In file aptrust-info.txt, tag Storage-Option has illegal value 'Wasabi-TX'"])
    # DART before 2.0.20 wrote a wrong BTR identifier; APTrust still judges the bag by BTR
    d = make_bag(bags, "btr_dart_identifier", payload=BTR_PAYLOAD, checksums=["sha512"], aptrust_info=None,
                 bag_info=[("Source-Organization", "Example University"), ("Bag-Count", ""),
                           ("BagIt-Profile-Identifier", DART_BTR)])
    add("btr_dart_identifier", d, "btr_dart_identifier.tar", errors=[])
    # a tar without its two end-of-archive blocks (three of APTrust's test bags): Go reads it, so do we
    d = apt("example.edu.no_eof_blocks")
    no_eof = tar_bag(d, tars / "example.edu.no_eof_blocks.tar")
    body = no_eof.read_bytes()
    end = len(body.rstrip(b"\0"))
    no_eof.write_bytes(body[: -(-end // 512) * 512])
    cases["no_eof_blocks"] = Case("no_eof_blocks", no_eof, no_eof.name, errors=[])

    # ---------------------------------------------------------------- invalid bags (APTrust wording)
    d = apt("example.edu.fetchtxt")
    (d / "fetch.txt").write_text("http://example.com/x.dat 5 data/x.dat\n")
    add("fetch_txt", d, "example.edu.fetchtxt.tar", errors=["Bag has fetch.txt file which profile does not allow"])

    d = apt("example.edu.sample_bad_access", aptrust_info=[("Title", "Bad access"), ("Access", "Hands Off!")])
    add("bad_access", d, "example.edu.sample_bad_access.tar",
        errors=["In file aptrust-info.txt, tag Access has illegal value 'Hands Off!'"])

    d = apt("example.edu.tagsample_bad",
            aptrust_info=[("Title", ""), ("Access", "acksess"), ("Storage-Option", "Cardboard-Box")])
    # as in APTrust's bag, a manifest line with a damaged digest too: never reported, because
    # the tag errors stop validation before the file checks (and it is no parse error either)
    manifest = d / "manifest-sha256.txt"
    bad_digest = "This-checksum-is-bad-on-purpose.-The-validator-should-catch-it!!"
    manifest.write_text(manifest.read_text().replace(sha256(APT_PAYLOAD["datastream-descMetadata"]), bad_digest))
    rewrite_tag_manifests(d)
    add("tag_sample_bad", d, "example.edu.tagsample_bad.tar", errors=[
        "In file aptrust-info.txt, required tag Title has no value",
        "In file aptrust-info.txt, tag Access has illegal value 'acksess'",
        "In file aptrust-info.txt, tag Storage-Option has illegal value 'Cardboard-Box'",
    ])

    name = "example.edu.sample_bad_checksums"
    d = apt(name)
    original = APT_PAYLOAD["datastream-DC"]
    tampered = original.replace(b"Sample", b"Tamper")  # same size, so only the digests differ
    (d / "data" / "datastream-DC").write_bytes(tampered)
    add("bad_checksums", d, f"{name}.tar", ordered=False, errors=[
        f"File {ident(name, 'data/datastream-DC')}: ingest md5 checksum {md5(tampered)} "
        f"doesn't match manifest checksum {md5(original)}",
        f"File {ident(name, 'data/datastream-DC')}: ingest sha256 checksum {sha256(tampered)} "
        f"doesn't match manifest checksum {sha256(original)}",
    ])

    name = "example.edu.sample_bad_digest_text"
    d = apt(name, checksums=["md5"])
    manifest = d / "manifest-md5.txt"
    real = md5(APT_PAYLOAD["datastream-DC"])
    manifest.write_text(manifest.read_text().replace(real, real[:20] + "BlahBlahBlah"))
    rewrite_tag_manifests(d)
    add("bad_digest_text", d, f"{name}.tar", errors=[
        f"File {ident(name, 'data/datastream-DC')}: ingest md5 checksum {real} "
        f"doesn't match manifest checksum {real[:20]}BlahBlahBlah"])

    name = "example.edu.sample_missing_data_file"
    d = apt(name, checksums=["md5"])
    (d / "data" / "datastream-DC").unlink()
    add("missing_data_file", d, f"{name}.tar",
        errors=[f"File {ident(name, 'data/datastream-DC')} in manifest-md5.txt is missing from bag"])

    d = apt("example.edu.sample_no_aptrust_info", aptrust_info=None)
    add("no_aptrust_info", d, "example.edu.sample_no_aptrust_info.tar", errors=[
        "Required tag Title in file aptrust-info.txt is missing",
        "Required tag Access in file aptrust-info.txt is missing",
    ])

    d = apt("example.edu.sample_no_bag_info")
    (d / "bag-info.txt").unlink()
    rewrite_tag_manifests(d)
    # bag-info.txt is optional in BagIt and in APTrust 2.3; APTrust 2.2 requires Source-Organization.
    add("no_bag_info", d, "example.edu.sample_no_bag_info.tar", errors=[])
    cases["no_bag_info_v22"] = Case("no_bag_info_v22", cases["no_bag_info"].tar, "example.edu.sample_no_bag_info.tar",
                                    profile="aptrust-2.2",
                                    errors=["Required tag Source-Organization in file bag-info.txt is missing"])

    d = apt("example.edu.sample_no_bagit")
    (d / "bagit.txt").unlink()
    rewrite_tag_manifests(d)
    add("no_bagit", d, "example.edu.sample_no_bagit.tar", errors=["Missing required tag bagit.txt/BagIt-Version."])

    name = "example.edu.sample_no_data_dir"
    d = apt(name, checksums=["md5"])
    shutil.rmtree(d / "data")
    add("no_data_dir", d, f"{name}.tar", ordered=False, errors=[
        f"File {ident(name, 'data/' + k)} in manifest-md5.txt is missing from bag" for k in APT_PAYLOAD
    ])

    d = apt("example.edu.sample_no_md5_manifest", checksums=["sha256"])
    add("no_md5_manifest", d, "example.edu.sample_no_md5_manifest.tar",
        errors=["Bag is missing required manifest 'md5'"])

    d = apt("example.edu.sample_no_title", aptrust_info=[("Title", ""), ("Access", "Consortia")])
    add("no_title", d, "example.edu.sample_no_title.tar",
        errors=["In file aptrust-info.txt, required tag Title has no value"])

    d = apt("test.edu.sample_illegal_control", payload={**APT_PAYLOAD, "datastream\x7f.txt": b"control\n"})
    add("illegal_control", d, "test.edu.sample_illegal_control.tar", institution="test.edu",
        errors=["File name 'data/datastream\\u007f.txt' contains one or more illegal control characters"])

    d = apt("example.edu.sample_nbsp", payload={**APT_PAYLOAD, "no\u00a0break.txt": b"nbsp\n"})
    add("nbsp_name", d, "example.edu.sample_nbsp.tar",
        errors=["File name 'data/no\\u00a0break.txt' contains a non-breaking space (U+00A0)"])

    name = "btr_bad_extraneous_file"
    d = make_bag(bags, name, payload=BTR_PAYLOAD, checksums=["sha512"], aptrust_info=None,
                 bag_info=[("Source-Organization", "Example University"), ("BagIt-Profile-Identifier", BTR)])
    (d / "data" / "nsqd.dat").write_bytes(b"freeloader\n")
    add("extraneous_file", d, f"{name}.tar",
        errors=[f"File {ident(name, 'data/nsqd.dat')} is not in manifest manifest-sha512.txt"])

    name = "btr_bad_missing_payload_file"
    d = make_bag(bags, name, payload=BTR_PAYLOAD, checksums=["sha512"], aptrust_info=None,
                 bag_info=[("Source-Organization", "Example University"), ("BagIt-Profile-Identifier", BTR)])
    (d / "data" / "netutil" / "listen.go").unlink()
    add("btr_missing_payload", d, f"{name}.tar",
        errors=[f"File {ident(name, 'data/netutil/listen.go')} in manifest-sha512.txt is missing from bag"])

    d = make_bag(bags, "btr_bad_missing_required_tags", payload=BTR_PAYLOAD, checksums=["sha256"],
                 aptrust_info=None, bag_info=[("BagIt-Profile-Identifier", BTR)])
    set_bag_info(d, {"Bagging-Date": None, "Payload-Oxum": None})
    add("btr_missing_tags", d, "btr_bad_missing_required_tags.tar", errors=[
        "Required tag Bagging-Date in file bag-info.txt is missing",
        "Required tag Payload-Oxum in file bag-info.txt is missing",
        "Required tag Source-Organization in file bag-info.txt is missing",
    ])

    d = apt("wrong_name")
    add("wrong_folder", d, "example.edu.wrong_folder.tar",
        errors=["Tarred bag should untar to directory 'example.edu.wrong_folder', not 'wrong_name'"])

    d = apt("example.edu.sample_bad_oxum")
    set_bag_info(d, {"Payload-Oxum": "999.5"})
    found = sum(len(v) for v in APT_PAYLOAD.values())
    add("bad_oxum", d, "example.edu.sample_bad_oxum.tar", errors=[
        f"Payload-Oxum validation failed. Expected 5 files and 999 bytes but found {len(APT_PAYLOAD)} files "
        f"and {found} bytes"
    ])

    d = apt("example.edu.sample_bagit_096")
    (d / "bagit.txt").write_text("BagIt-Version: 0.96\nTag-File-Character-Encoding: UTF-8\n")
    rewrite_tag_manifests(d)
    add("bad_bagit_version", d, "example.edu.sample_bagit_096.tar",
        errors=[f"BagIt-Version 0.96 is not permitted in BagIt profile {APTRUST_23}."])

    d = apt("example.edu.sample_v22_sha512", checksums=["md5", "sha512"],
            bag_info=[("Source-Organization", "Example University"), ("BagIt-Profile-Identifier", APTRUST_22)])
    add("v22_sha512_judged_by_v23", d, "example.edu.sample_v22_sha512.tar", errors=[])
    cases["v22_illegal_sha512"] = Case("v22_illegal_sha512", cases["v22_sha512_judged_by_v23"].tar,
                                       "example.edu.sample_v22_sha512.tar", profile="aptrust-2.2",
                                       errors=["Bag contains illegal manifest 'sha512'"])

    d = apt("example.edu.sample_unknown_profile",
            bag_info=[("BagIt-Profile-Identifier", "https://example.org/profiles/other.json")])
    add("unknown_profile", d, "example.edu.sample_unknown_profile.tar", errors=[])  # judged by APTrust 2.3

    name = "example.edu.sample_too_many"
    d = apt(name, checksums=["md5"])
    for i in range(40):
        (d / "data" / f"extra{i:02d}.dat").write_bytes(b"x")
    add("too_many_errors", d, f"{name}.tar", ordered=False, errors=[
        f"File {ident(name, f'data/extra{i:02d}.dat')} is not in manifest manifest-md5.txt" for i in range(30)
    ] + ["Too many errors"])

    # ---------------------------------------------------------------- tars the scanner refuses
    def refused(key: str, tar_name: str, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str,
                exact: bool = True) -> None:
        cases[key] = Case(key, raw_tar(tars / tar_name, members), tar_name, scan_error=message,
                          scan_error_exact=exact)

    top = "example.edu.evil"
    refused("dotdot", f"{top}.tar", [(member(top, tarfile.DIRTYPE), None),
                                      (member(f"{top}/../../etc/passwd"), b"root:x:0:0\n")],
            "escapes its root ('..')", exact=False)
    refused("absolute", "example.edu.absolute.tar", [(member("/etc/passwd"), b"root\n")], "is absolute", exact=False)
    refused("symlink", f"{top}.sym.tar", [(member(top, tarfile.DIRTYPE), None),
                                          (member(f"{top}/bagit.txt"), b"BagIt-Version: 1.0\n"),
                                          (member(f"{top}/data/passwd", tarfile.SYMTYPE, "/etc/passwd"), None)],
            f"tar member '{top}/data/passwd' is a link (to '/etc/passwd'); links are not allowed")
    refused("hardlink", f"{top}.hard.tar", [(member(f"{top}/bagit.txt"), b"BagIt-Version: 1.0\n"),
                                            (member(f"{top}/data/x", tarfile.LNKTYPE, f"{top}/bagit.txt"), None)],
            f"tar member '{top}/data/x' is a link (to '{top}/bagit.txt'); links are not allowed")
    refused("fifo", f"{top}.fifo.tar", [(member(f"{top}/data/pipe", tarfile.FIFOTYPE), None)],
            f"tar member '{top}/data/pipe' is not a regular file or directory")
    refused("no_top_dir", "example.edu.no_top_dir.tar",
            [(member("bagit.txt"), b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"),
             (member("data/x.txt"), b"x\n")],
            "Illegal path, 'bagit.txt'. Should start with 'example.edu.no_top_dir/'.")
    refused("two_top_dirs", "example.edu.two_tops.tar",
            [(member("example.edu.two_tops/bagit.txt"), b"BagIt-Version: 1.0\n"),
             (member("other/data/x.txt"), b"x\n")],
            "Illegal path, 'other/data/x.txt'. Should start with 'example.edu.two_tops/'.")
    refused("duplicate", "example.edu.dup.tar",
            [(member("example.edu.dup/bagit.txt"), b"a\n"), (member("example.edu.dup/bagit.txt"), b"b\n")],
            "tar member 'example.edu.dup/bagit.txt' appears more than once in the archive")

    good = cases["good_aptrust"].tar.read_bytes()
    truncated = tars / "example.edu.truncated.tar"
    truncated.write_bytes(good[: len(good) // 2 + 100])
    cases["truncated"] = Case("truncated", truncated, truncated.name, scan_error="tar archive", scan_error_exact=False)
    garbage = tars / "example.edu.garbage.tar"
    garbage.write_bytes(hashlib.sha512(b"not a tar").digest() * 64)
    cases["not_tar"] = Case("not_tar", garbage, garbage.name, scan_error="not a readable tar archive",
                            scan_error_exact=False)
    return cases

