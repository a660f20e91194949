"""The NRAO flow end to end, driven through ``python flows/run.py nrao`` in-process: synthetic CASA
runs in, files in a fake NGAS over HTTP (read back byte for byte), rows in a real PostgreSQL,
status messages on a real RabbitMQ (or the outbox)."""
from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest

from fake_ngas import FakeNgas
from flows.nrao import samples

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


class LateFaults(FakeNgas):
    """Faults start only after ``after`` pushes, so they hit a file in the middle of a product."""

    def __init__(self, root: Path, *, after: int, **options: Any) -> None:
        super().__init__(root, **options)
        self.after = after

    def _take_fault(self, command: str):
        if command == "PROBE" or len(self.pushes()) <= self.after:
            return None
        return super()._take_fault(command)


@dataclass
class NraoEnv:
    name: str
    fake: FakeNgas
    source_root: Path
    staging_root: Path
    pg_dsn: str
    amqp_url: str | None
    exchange: str
    queue: str
    unique: str

    def run(self, *argv: str) -> tuple[int, dict[str, Any]]:
        """The user's path: the CLI's parser and handler, in this process; the last stdout line is JSON."""
        from flows.run import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["nrao", *argv, "--config", self.name])
        return code, json.loads(out.getvalue().strip().splitlines()[-1])

    def messages(self) -> list[tuple[str, dict[str, Any]]]:
        if self.amqp_url is None:
            from tasks.notify import pending

            return [(m.routing_key, m.body) for m in pending() if m.exchange == self.exchange]
        out = []
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            ch = conn.channel()
            while True:
                method, _, body = ch.basic_get(self.queue, auto_ack=True)
                if method is None:
                    return out
                out.append((method.routing_key, json.loads(body)))
        finally:
            conn.close()

    def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        from tasks.registry import Registry

        with Registry(self.pg_dsn) as r:
            return r.execute(query, params or None)

    def archives(self) -> list[Any]:
        return self.fake.pushes()


@pytest.fixture
def nrao_env(prefect_api, pg_dsn: str, amqp_url: str, unique: str, ingest_home: Path, tmp_path: Path):
    """make(fake=None, amqp=True, **NgasBlock fields) → an env with its own block documents."""
    from pydantic import SecretStr

    from blocks.broker import BrokerBlock
    from blocks.ngas import NgasBlock
    from blocks.registry import RegistryBlock
    from tasks.notify import declare_topology

    stack = contextlib.ExitStack()
    declared: list[tuple[str, str]] = []

    def make(fake: FakeNgas | None = None, *, amqp: bool = True, **ngas: Any) -> NraoEnv:
        fake = fake or stack.enter_context(FakeNgas(tmp_path / f"ngas-{len(declared)}"))
        name = f"t-{unique}-{len(declared)}"
        exchange, queue = f"nrao-{unique}-{len(declared)}", f"nrao-{unique}-{len(declared)}-all"
        if amqp:
            declare_topology(amqp_url, [(exchange, "topic")], [queue], [(queue, exchange, "#")])
        declared.append((exchange, queue))
        env = NraoEnv(name, fake, ingest_home / "runs", ingest_home / "staging" / "nrao", pg_dsn,
                      amqp_url if amqp else None, exchange, queue, unique)
        env.source_root.mkdir(parents=True, exist_ok=True)
        RegistryBlock(dsn=SecretStr(pg_dsn)).save(name, overwrite=True)
        BrokerBlock(amqp_url=SecretStr(amqp_url) if amqp else None).save(name, overwrite=True)
        options = {"url": fake.url, "retries": 3, "backoff_seconds": 0.01, "timeout": 30.0, **ngas}
        NgasBlock(source_root=str(env.source_root), staging_root=str(env.staging_root),
                  status_exchange=exchange, **options).save(name, overwrite=True)
        return env

    yield make
    stack.close()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    for exchange, queue in declared:
        ch.queue_delete(queue)
        ch.exchange_delete(exchange)
    conn.close()


# ------------------------------------------------------------------ sample products, unique per test


def _rename_prefix(products: Path, old: str, new: str) -> None:
    for p in products.iterdir():
        if p.name.startswith(old):
            p.rename(p.with_name(new + p.name[len(old):]))


def calibration(env: NraoEnv) -> tuple[list[str], str]:
    name = samples.make_calibration_run(env.source_root, f"cal-{env.unique}")
    return ["--calibration", name, "--input-locator", f"uid://evla/execblock/eb-{env.unique}"], name


def image(env: NraoEnv, *, with_aux: bool = True) -> tuple[list[str], str]:
    name = samples.make_image_run(env.source_root, f"img-{env.unique}", with_aux=with_aux)
    _rename_prefix(env.source_root / name / "products", samples.IMAGE_PREFIX, f"{samples.IMAGE_PREFIX}{env.unique}")
    return ["--image", name], name


def seci(env: NraoEnv) -> tuple[list[str], str]:
    name = samples.make_seci_run(env.source_root, f"seci-{env.unique}")
    _rename_prefix(env.source_root / name / "products", samples.SECI_IMAGE_PREFIX,
                   samples.SECI_IMAGE_PREFIX.replace(".v1.", f".{env.unique}."))
    return ["--seci", name, f"uid://evla/calibration/cal-{env.unique}"], name


def observation(env: NraoEnv) -> tuple[list[str], str]:
    sdm = samples.make_observation(env.source_root / "sdms", f"TSKY0001.sb1.eb{env.unique}.59400.5")
    return ["--observation", "sdms", sdm], f"sdms/{sdm}"


PRODUCTS = {"calibration": calibration, "image": image, "seci": seci, "observation": observation}


def retrieve(env: NraoEnv, f: dict[str, Any], dest: Path) -> bytes:
    from flows.nrao.ngas import NgasClient

    with NgasClient(env.fake.url) as client:
        got = client.retrieve(f["ngas_file_id"], dest, file_version=f["version"], algorithms=("sha256",))
    assert got.digests["sha256"] == f["sha256"] and got.size == f["size"]
    return dest.read_bytes()


def tar_members(data: bytes, mode: str = "r:") -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def nothing_recorded(env: NraoEnv, source: str, kind: str) -> None:
    groups = env.sql("SELECT count(*) AS n FROM nrao_product_files WHERE product_group = %s", f"{kind}:{source}")
    products = env.sql("SELECT count(*) AS n FROM nrao_products WHERE product_group = %s", f"{kind}:{source}")
    files = env.sql("SELECT count(*) AS n FROM files f JOIN ingests i ON i.id = f.ingest_id "
                    "WHERE i.domain = 'nrao' AND i.natural_key = %s", f"{kind}:{source}")
    assert groups[0]["n"] == products[0]["n"] == files[0]["n"] == 0


# ------------------------------------------------------------------ every product type


CASES = {  # kind → FakeNgas options, NgasBlock options
    "calibration": ({}, {}),
    "image": ({}, {"archive_command": "QARCHIVE"}),
    "seci": ({"crc_variant": "ngamsGenCrc32", "honour_crc_variant": False}, {"crc_variant": None}),  # legacy signed
    "observation": ({"crc_variant": "crc32", "legacy_signed": True}, {"crc_variant": "crc32"}),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_product_archived_recorded_and_retrieved_identical(nrao_env, kind: str, tmp_path: Path) -> None:
    fake_options, block_options = CASES[kind]
    fake = FakeNgas(tmp_path / "ngas", **fake_options).start()
    try:
        env = nrao_env(fake, **block_options)
        argv, source = PRODUCTS[kind](env)
        code, summary = env.run(*argv)
        assert code == 0, summary
        assert summary["state"] == "COMPLETED" and summary["kind"] == kind
        files = summary["files"]
        assert files and all(f["version"] == 1 for f in files)
        assert {r.command for r in env.archives()} == {block_options.get("archive_command", "ARCHIVE")}
        assert len(env.archives()) == len(files)  # each file pushed once
        src = env.source_root / source
        by_name = {}
        for i, f in enumerate(files):
            by_name[f["name"]] = retrieve(env, f, tmp_path / f"copy-{i}")
            assert fake.versions(f["ngas_file_id"]) == [1]
            assert f["checksum"].split(":")[1] == fake.record(f["ngas_file_id"]).checksum
        # the bytes NGAS holds are the product's bytes
        if kind == "calibration":
            members = tar_members(by_name[f"{source}.tar"])
            expected = {p.relative_to(src / "products").as_posix(): p.read_bytes()
                        for p in (src / "products").rglob("*") if p.is_file() and p.name != "weblog.tgz"}
            assert members == expected
        elif kind == "observation":
            sdm = Path(source).name
            assert {n: b for n, b in by_name.items() if n.startswith(sdm + "/")} == {
                f"{sdm}/{p.relative_to(src).as_posix()}": p.read_bytes() for p in src.rglob("*") if p.is_file()}
        else:
            for p in (src / "products").glob("*.fits"):
                assert by_name[p.name] == p.read_bytes()
            aux = src / "aux_image_metadata.json" if kind == "image" else src / "products" / "aux_image_metadata.json"
            artifacts = next(n for n in by_name if n.startswith("pipeline_artifacts_"))
            assert set(tar_members(by_name[artifacts])) == {
                "casa_pipescript.py", "uid___A001_X1_X2.pprequest.xml", "casa_commands.log", "pipeline_manifest.xml"}
        if kind != "observation":
            weblog = tar_members(by_name["weblog.tgz"], "r:gz")
            assert weblog and all(n.startswith(samples.WEBLOG_NEW + "/") for n in weblog)
        ingestion = next(n for n in by_name if n.startswith("ingestion_artifacts_"))
        artifact = tar_members(by_name[ingestion])
        manifest = json.loads(artifact["ingestion-manifest.json"])
        if kind in ("image", "seci"):
            assert artifact["aux_image_metadata.json"] == aux.read_bytes()
            assert manifest["parameters"]["additional_metadata"] == "aux_image_metadata.json"
        listed = {sp["filename"] for sp in manifest["output_group"]["science_products"]} | {
            a["filename"] for sp in manifest["output_group"]["science_products"]
            for a in sp.get("ancillary_products", [])} | {a["filename"] for a in manifest["output_group"][
                "ancillary_products"]}
        archived = {n.split("/")[0] for n in by_name}
        assert listed == archived  # the manifest and aux metadata travel inside the ingestion artifacts tar

        # registry: products, every file version with NGAS's id and CRC, image metadata, events
        products = env.sql("SELECT * FROM nrao_products WHERE product_group = %s ORDER BY filename",
                           f"{kind}:{source}")
        assert [p["locator"] for p in products] == [p["locator"] for p in sorted(
            summary["products"], key=lambda p: p["filename"])]
        assert all(p["manifest"] == manifest for p in products)
        rows = env.sql("SELECT * FROM nrao_product_files WHERE product_group = %s", f"{kind}:{source}")
        assert {(r["ngas_file_id"], r["file_version"], r["size"], r["checksums"]["sha256"]) for r in rows} == {
            (f["ngas_file_id"], f["version"], f["size"], f["sha256"]) for f in files}
        for r in rows:
            assert r["ngas_checksum"] == fake.record(r["ngas_file_id"]).checksum
            assert r["ngas_checksum_plugin"] == fake.record(r["ngas_file_id"]).plugin
        images = env.sql("SELECT i.* FROM nrao_images i JOIN nrao_products p ON p.id = i.product_id "
                         "WHERE p.product_group = %s", f"{kind}:{source}")
        if kind in ("image", "seci"):
            from flows.nrao.fits_metadata import image_metadata

            assert len(images) == len(products)
            for img in images:
                header = image_metadata(src / "products" / img["filename"])
                assert (img["naxis1"], img["ra_deg"], img["freq_min_hz"], img["project"]) == (
                    header.naxis1, header.ra_deg, header.freq_min_hz, header.project)
        else:
            assert images == []
        events = env.sql("SELECT e.event_type, e.subject FROM events e JOIN ingests i ON i.id = e.ingest_id "
                         "WHERE i.domain = 'nrao' AND i.natural_key = %s", f"{kind}:{source}")
        kinds = [e["event_type"] for e in events]
        assert kinds.count("replication") == kinds.count("fixity check") == len(files)
        assert all({"sha256"} < set(r["checksums"]) for r in rows)  # a CRC and sha256, in the upload's one pass
        assert kinds.count("message digest calculation") == sum(len(r["checksums"]) for r in rows)
        assert kinds.count("ingestion") == len(products)
        state = env.sql("SELECT state FROM ingests WHERE domain = 'nrao' AND natural_key = %s", f"{kind}:{source}")
        assert state == [{"state": "completed"}]
        assert list(env.staging_root.iterdir()) == []  # staging cleaned up
        assert [(k, b["state"]) for k, b in env.messages()] == [("nrao.ingest.completed", "COMPLETED")]
    finally:
        fake.stop()


# ------------------------------------------------------------------ NGAS faults


def test_failure_reply_fails_with_ngas_message_and_records_nothing(nrao_env, tmp_path: Path) -> None:
    with LateFaults(tmp_path / "ngas", after=2) as fake:  # files 1-2 go in; NGAS refuses the third
        env = nrao_env(fake)
        argv, source = calibration(env)
        message = "NGAMS_ER_DAPI_BAD_FILE:4011:ERROR: Data Archiving Plug-In reported the file as illegal"
        fake.fail_next(message)
        code, summary = env.run(*argv)
    assert code == 1 and summary["state"] == "ERROR"
    # the error names the staged file, its NGAS id and mime type, then NGAS's own words
    third = env.archives()[2]
    name = re.escape(f"(NGAS file id {third.params['filename']}, mime type {third.params['mime_type']}): ")
    assert re.fullmatch(r"NGAS refused \S+ " + name + re.escape(message), summary["error"]), summary["error"]
    message = summary["error"]
    assert len(env.archives()) == 3  # a FAILURE is not retried
    assert len(fake.files) == 2  # in NGAS, but not in the registry: the product is not complete
    nothing_recorded(env, source, "calibration")
    ingest = env.sql("SELECT state, last_error FROM ingests WHERE natural_key = %s", f"calibration:{source}")
    assert ingest == [{"state": "failed", "last_error": message}]
    assert env.messages() == [("nrao.ingest.failed", {"kind": "calibration", "source": source, "state": "ERROR",
                                                      "error": message})]


def test_503_is_retried_by_client_then_by_prefect(nrao_env, tmp_path: Path) -> None:
    with LateFaults(tmp_path / "ngas", after=1) as fake:  # the second file meets three 503s
        env = nrao_env(fake, retries=2)  # two HTTP attempts per task try: the third 503 needs a task retry
        argv, source = calibration(env)
        fake.unavailable_next(3)
        code, summary = env.run(*argv)
    assert code == 0, summary
    assert len(env.archives()) == len(summary["files"]) + 3
    # a 503 stores nothing, and the retried task did not push the file NGAS had already confirmed
    assert all(f["version"] == 1 for f in summary["files"])
    assert all(fake.versions(f["ngas_file_id"]) == [1] for f in summary["files"])
    assert len(env.sql("SELECT * FROM nrao_product_files WHERE product_group = %s", f"calibration:{source}")) == \
        len(summary["files"])
    assert [k for k, _ in env.messages()] == ["nrao.ingest.completed"]


def test_crc_mismatch_fails_and_records_nothing(nrao_env) -> None:
    env = nrao_env()
    argv, source = calibration(env)
    env.fake.corrupt_checksum_next(100)
    code, summary = env.run(*argv)
    assert code == 2 and summary["state"] == "FAILED"
    assert "checksum mismatch" in summary["error"]
    assert len(env.archives()) == 4  # the first file, once per task try (1 + 3 retries); nothing after it
    nothing_recorded(env, source, "calibration")
    assert [(k, b["state"]) for k, b in env.messages()] == [("nrao.ingest.failed", "FAILED")]


# ------------------------------------------------------------------ bad input


def test_missing_aux_metadata_is_a_user_error_reported_via_outbox(nrao_env) -> None:
    env = nrao_env(amqp=False)  # no broker: the failure notice goes to the outbox, once
    argv, source = image(env, with_aux=False)
    code, summary = env.run(*argv)
    assert code == 1 and summary["state"] == "ERROR"
    assert "aux_image_metadata.json is required for image ingestion" in summary["error"]
    assert env.archives() == []
    nothing_recorded(env, source, "image")
    assert [(k, b["state"]) for k, b in env.messages()] == [("nrao.ingest.failed", "ERROR")]


@pytest.mark.parametrize("source, expected", [
    ("../outside", "escapes its root"),
    ("/etc", "outside the source root"),
    ("empty-run", "is empty"),
    ("no-such-run", "does not exist"),
])
def test_bad_sources_are_user_errors(nrao_env, source: str, expected: str) -> None:
    env = nrao_env()
    (env.source_root / "empty-run").mkdir()
    code, summary = env.run("--calibration", source, "--input-locator", "uid://evla/execblock/x")
    assert code == 1 and expected in summary["error"], summary
    assert env.archives() == []


# ------------------------------------------------------------------ reingest, dry run


def test_reingest_needs_the_flag_and_makes_new_versions(nrao_env) -> None:
    env = nrao_env()
    argv, source = calibration(env)
    code, first = env.run(*argv)
    assert code == 0, first
    code, refused = env.run(*argv)
    assert code == 1 and refused["state"] == "ERROR"
    locator = first["products"][0]["locator"]
    assert refused["error"] == (f"already ingested: calibration:{source}.tar (as {locator}); "
                                "pass --reingest to archive new versions")
    assert len(env.archives()) == len(first["files"])  # the refused run pushed nothing
    # a refused duplicate is no failed ingest: the registry still says completed
    ingest = env.sql("SELECT state, last_error FROM ingests WHERE domain = 'nrao' AND natural_key = %s",
                     f"calibration:{source}")
    assert [(i["state"], i["last_error"]) for i in ingest] == [("completed", None)]
    code, second = env.run(*argv, "--reingest")
    assert code == 0, second
    assert second["products"] == first["products"]  # same locator
    assert [f["ngas_file_id"] for f in second["files"]] == [f["ngas_file_id"] for f in first["files"]]
    assert all(f["version"] == 2 for f in second["files"])
    for f in second["files"]:
        assert env.fake.versions(f["ngas_file_id"]) == [1, 2]
    product = env.sql("SELECT ingest_count FROM nrao_products WHERE locator = %s", locator)
    assert product == [{"ingest_count": 2}]
    rows = env.sql("SELECT file_version FROM nrao_product_files WHERE product_group = %s ORDER BY file_version",
                   f"calibration:{source}")
    assert [r["file_version"] for r in rows] == [1] * len(first["files"]) + [2] * len(first["files"])
    assert [k for k, _ in env.messages()] == ["nrao.ingest.completed", "nrao.ingest.failed",
                                              "nrao.ingest.completed"]


def test_dry_run_stages_and_plans_but_writes_nothing(nrao_env) -> None:
    from flows.nrao.manifest import validate_manifest

    env = nrao_env()
    argv, source = image(env)
    code, summary = env.run(*argv, "--dry-run")
    assert code == 0 and summary["state"] == "DRY_RUN", summary
    assert env.fake.requests == []
    nothing_recorded(env, source, "image")
    assert env.sql("SELECT * FROM ingests WHERE natural_key = %s", f"image:{source}") == []
    assert env.messages() == []
    manifest = json.loads(Path(summary["manifest"]).read_text())
    validate_manifest(manifest)
    assert manifest["parameters"]["ngas_ingest"] is False
    staged = {p.name for p in Path(summary["staging_dir"]).iterdir()} - {"ingestion-manifest.json",
                                                                          "aux_image_metadata.json"}
    assert {row["name"] for row in summary["plan"]} == staged
    assert all(row["ngas_file_id"].startswith("uid___evla_") for row in summary["plan"])


# ------------------------------------------------------------------ no NGAS configured


def test_without_ngas_url_the_local_archive_is_used(nrao_env, tmp_path: Path) -> None:
    from flows.nrao.local_ngas import LocalNgas
    from flows.nrao.ngas import NgasClient

    env = nrao_env(url=None, local_root=str(tmp_path / "local-ngas"))
    argv, source = observation(env)
    code, summary = env.run(*argv)
    assert code == 0, summary
    assert env.fake.requests == []  # nothing went to the configured fake
    rows = env.sql("SELECT ngas_file_id, file_version FROM nrao_product_files WHERE product_group = %s",
                   f"observation:{source}")
    uris = env.sql("SELECT f.vault_uri FROM files f JOIN ingests i ON i.id = f.ingest_id WHERE i.natural_key = %s",
                   f"observation:{source}")
    assert len(rows) == len(uris) == len(summary["files"])
    src = env.source_root / source
    with LocalNgas(tmp_path / "local-ngas") as restarted, NgasClient(restarted.url) as client:
        for f in summary["files"]:  # state survives a restart: it is all on disk
            assert client.file_status(f["ngas_file_id"]).file_version == 1
            assert client.checkfile(f["ngas_file_id"], 1).ok
            if "/" in f["name"]:
                copy = tmp_path / "copy"
                client.retrieve(f["ngas_file_id"], copy, file_version=1)
                assert copy.read_bytes() == (src / f["name"].split("/", 1)[1]).read_bytes()
    for u in uris:  # the registry points at the stored file itself
        assert Path(u["vault_uri"].removeprefix("file://")).is_file()


def test_calibration_input_locator_comes_from_the_run_metadata(nrao_env) -> None:
    env = nrao_env()
    name = samples.make_calibration_run(env.source_root, f"cal-{env.unique}")
    code, summary = env.run("--calibration", name, "--dry-run")
    assert code == 1 and "needs the execution block locator" in summary["error"]
    eb = f"uid://evla/execblock/eb-{env.unique}"
    (env.source_root / name / "metadata.json").write_text(json.dumps({"productLocator": eb}))
    code, summary = env.run("--calibration", name, "--dry-run")
    assert code == 0, summary
    manifest = json.loads(Path(summary["manifest"]).read_text())
    assert manifest["input_group"]["science_products"] == [{"locator": eb}]
    assert env.fake.requests == [] and env.messages() == []
