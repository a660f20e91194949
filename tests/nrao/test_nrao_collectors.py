"""Product staging: what each collector puts in staging, and every way it refuses bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from flows.nrao import collectors, products, samples
from flows.nrao.collectors import (
    classify_images,
    collect_calibration,
    collect_image,
    collect_observation,
    collect_seci,
)
from flows.nrao.products import AncillaryProductType, IngestionType, ScienceProductType
from tasks.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2021, 8, 4, 1, 57, 8, 564000, tzinfo=timezone.utc)


def members(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


# ---------------------------------------------------------------- calibration


def test_calibration_tars_tables_and_only_the_newest_weblog(roots) -> None:
    src, staging = roots
    rel = samples.make_calibration_run(src)
    staged = collect_calibration(src, rel, staging, "req-1", product_name=samples.SAMPLE_EB, now=NOW)

    assert staged.staging_dir == (staging / "req-1").resolve()
    assert staged.timestamp == "2021_08_04T01_57_08.564"
    cal_tar = staged.staging_dir / f"{samples.SAMPLE_EB}.tar"
    expected = sorted(p.name for p in (src / rel / "products").iterdir() if p.name != "weblog.tgz")
    assert members(cal_tar) == expected  # every table, no weblog of any kind
    with tarfile.open(cal_tar) as tar:  # content survives byte for byte
        got = tar.extractfile("unknown.session_1.caltables.tgz").read()
    assert got == (src / rel / "products" / "unknown.session_1.caltables.tgz").read_bytes()

    weblog = staged.staging_dir / "weblog.tgz"
    with tarfile.open(weblog, "r:gz") as tar:
        names = tar.getnames()
    assert {n.split("/")[0] for n in names} == {samples.WEBLOG_NEW}
    assert f"{samples.WEBLOG_NEW}/html/index.html" in names
    assert staged.science_products[0].type is ScienceProductType.CALIBRATION
    assert [a.type for a in staged.ancillary_products] == [AncillaryProductType.PIPELINE_WEBLOG]
    assert sorted(staged.files()) == sorted([cal_tar.name, "weblog.tgz"])
    assert not list(staged.staging_dir.glob(".*.part"))  # atomic writes left no temporaries


def test_restaging_gives_identical_tars(roots) -> None:
    """A re-run after a failure restages from scratch; identical bytes let it reuse what NGAS holds."""
    import hashlib
    import time

    src, staging = roots
    rel = samples.make_calibration_run(src)
    digests = []
    for _ in range(2):
        staged = collect_calibration(src, rel, staging, "req-same", product_name=samples.SAMPLE_EB, now=NOW)
        digests.append({name: hashlib.sha256((staged.staging_dir / name).read_bytes()).hexdigest()
                        for name in staged.files()})
        time.sleep(1.1)  # a gzip header stamped with the time of writing would differ now
    assert digests[0] == digests[1] and "weblog.tgz" in digests[0]


def test_newest_weblog_is_chosen_by_name_not_mtime(roots) -> None:
    src, staging = roots
    rel = samples.make_calibration_run(src)
    old = src / rel / "working" / samples.WEBLOG_OLD
    os.utime(old, (2_000_000_000, 2_000_000_000))  # the old weblog was touched last
    staged = collect_calibration(src, rel, staging, "req-2", now=NOW)
    with tarfile.open(staged.staging_dir / "weblog.tgz", "r:gz") as tar:
        assert {n.split("/")[0] for n in tar.getnames()} == {samples.WEBLOG_NEW}


def test_calibration_without_tables_or_weblog(roots) -> None:
    src, staging = roots
    (src / "run" / "products").mkdir(parents=True)
    (src / "run" / "products" / "weblog.tgz").write_bytes(b"x")
    with pytest.raises(UserError, match="no calibration tables"):
        collect_calibration(src, "run", staging, "r")
    rel = samples.make_calibration_run(src, "run2")
    import shutil

    shutil.rmtree(src / rel / "working")
    (src / rel / "products" / "weblog.tgz").unlink()
    with pytest.raises(UserError, match="no weblog"):
        collect_calibration(src, rel, staging, "r")


def test_restaging_replaces_a_previous_attempt(roots) -> None:
    src, staging = roots
    rel = samples.make_calibration_run(src)
    leftover = staging / "req" / "half-written.part"
    leftover.parent.mkdir()
    leftover.write_bytes(b"crash debris")
    staged = collect_calibration(src, rel, staging, "req", now=NOW)
    assert not leftover.exists()
    assert sorted(p.name for p in staged.staging_dir.iterdir()) == sorted(staged.files())


# ---------------------------------------------------------------- image and SECI


def test_image_staging(roots) -> None:
    src, staging = roots
    rel = samples.make_image_run(src)
    staged = collect_image(src, rel, staging, "img", now=NOW)
    d = staged.staging_dir
    fits_in = sorted(p.name for p in (src / rel / "products").iterdir() if p.suffix in (".fits", ".png"))
    for name in fits_in:  # every image and ancillary copied, identical
        assert (d / name).read_bytes() == (src / rel / "products" / name).read_bytes()
    assert not (d / "README.txt").exists()
    by_image = {sp.filename: {a.type: a.filename for a in sp.ancillary_products} for sp in staged.science_products}
    cont = f"{samples.IMAGE_PREFIX}.X_band.cont.I"
    cube = f"{samples.IMAGE_PREFIX}.spw2.cube.I"
    assert by_image == {
        f"{cont}.pbcor.tt0.fits": {
            AncillaryProductType.PRIMARY_BEAM: f"{cont}.pb.tt0.fits",
            AncillaryProductType.SPECTRAL_INDEX: f"{cont}.alpha.fits",
            AncillaryProductType.SPECTRAL_INDEX_ERROR: f"{cont}.alpha.error.fits",
            AncillaryProductType.CLEAN_MASK: f"{cont}.mask.fits",
            AncillaryProductType.THUMBNAIL_IMAGE: f"{cont}.pbcor.tt0.png",
        },
        f"{cube}.pbcor.fits": {AncillaryProductType.PRIMARY_BEAM: f"{cube}.pb.fits"},
    }
    artifacts = d / products.pipeline_artifacts_name(staged.timestamp)
    assert artifacts.name == "pipeline_artifacts_2021_08_04T01_57_08.564.tar"
    assert members(artifacts) == sorted(["casa_pipescript.py", "uid___A001_X1_X2.pprequest.xml",
                                         "casa_commands.log", "pipeline_manifest.xml"])
    assert json.loads((d / "aux_image_metadata.json").read_text())["projectCode"] == "TSKY0001"
    assert staged.additional_metadata == "aux_image_metadata.json"
    assert [a.type for a in staged.ancillary_products] == [AncillaryProductType.PIPELINE_WEBLOG,
                                                         AncillaryProductType.PIPELINE_ARTIFACTS]


def test_seci_staging(roots) -> None:
    src, staging = roots
    rel = samples.make_seci_run(src)
    staged = collect_seci(src, rel, staging, "seci", now=NOW)
    assert staged.ingestion_type is IngestionType.SECI
    (sp,) = staged.science_products
    assert sp.filename == f"{samples.SECI_IMAGE_PREFIX}.image.pbcor.tt0.subim.fits"
    assert {a.type for a in sp.ancillary_products} == {AncillaryProductType.RMS_IMAGE,
                                                        AncillaryProductType.PRIMARY_BEAM}
    assert (staged.staging_dir / "aux_image_metadata.json").is_file()  # found in products/


@pytest.mark.parametrize("maker, collector", [(samples.make_image_run, collect_image),
                                              (samples.make_seci_run, collect_seci)])
def test_missing_aux_metadata_is_a_user_error(roots, maker, collector) -> None:
    src, staging = roots
    rel = maker(src, with_aux=False)
    with pytest.raises(UserError, match="aux_image_metadata.json is required"):
        collector(src, rel, staging, "x")


def test_aux_metadata_must_be_a_json_object(roots) -> None:
    src, staging = roots
    rel = samples.make_image_run(src)
    (src / rel / "aux_image_metadata.json").write_text("[1, 2")
    with pytest.raises(UserError, match="not valid JSON"):
        collect_image(src, rel, staging, "x")
    (src / rel / "aux_image_metadata.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="JSON object"):
        collect_image(src, rel, staging, "x")


def test_image_name_rules() -> None:
    groups = classify_images(["a.I.pbcor.tt0.fits", "a.I.pb.tt0.fits", "b.fits", "b.mask.fits", "notes.txt"],
                             collectors.IMAGE_RULES)
    assert groups == [("a.I.pbcor.tt0.fits", [(AncillaryProductType.PRIMARY_BEAM, "a.I.pb.tt0.fits")]),
                      ("b.fits", [(AncillaryProductType.CLEAN_MASK, "b.mask.fits")])]
    with pytest.raises(UserError, match="has no matching image"):
        classify_images(["a.I.pbcor.tt0.fits", "z.I.alpha.fits"], collectors.IMAGE_RULES)
    with pytest.raises(UserError, match="not a recognised image product"):
        classify_images(["x.image.pbcor.tt0.subim.fits", "x.residual.fits"], collectors.SECI_RULES)


# ---------------------------------------------------------------- observation


def test_observation_stages_sdm_and_bdfs(roots) -> None:
    src, staging = roots
    rel = samples.make_observation(src)
    staged = collect_observation(src, rel, staging, "obs", now=NOW)
    (sp,) = staged.science_products
    assert sp.type is ScienceProductType.EXECUTION_BLOCK and sp.filename == samples.SAMPLE_EB
    source_files = sorted(str(p.relative_to(src)) for p in (src / rel).rglob("*") if p.is_file())
    assert sorted(sp.members) == source_files
    for m in sp.members:
        assert (staged.staging_dir / m).read_bytes() == (src / m).read_bytes()


def test_observation_requires_an_sdm(roots) -> None:
    src, staging = roots
    (src / "notsdm").mkdir()
    (src / "notsdm" / "Main.xml").write_text("<x/>")
    with pytest.raises(UserError, match="ASDM.xml is missing"):
        collect_observation(src, "notsdm", staging, "o")


# ---------------------------------------------------------------- refusals shared by all


@pytest.mark.parametrize("collector", [collect_calibration, collect_image, collect_seci, collect_observation])
def test_empty_source_directory(roots, collector) -> None:
    src, staging = roots
    (src / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        collector(src, "empty", staging, "r")


@pytest.mark.parametrize("source", ["../outside", "/etc", "a/../../b"])
def test_source_outside_its_root(roots, source) -> None:
    src, staging = roots
    (src.parent / "outside").mkdir()
    samples.make_calibration_run(src.parent, "outside")
    with pytest.raises(UserError):
        collect_calibration(src, source, staging, "r")


def test_source_symlink_leading_out_is_refused(roots, tmp_path) -> None:
    src, staging = roots
    rel = samples.make_calibration_run(tmp_path, "elsewhere")
    os.symlink(tmp_path / rel, src / "sneaky")
    with pytest.raises(UserError, match="outside"):
        collect_calibration(src, "sneaky", staging, "r")


def test_member_symlink_leading_out_is_refused(roots, tmp_path) -> None:
    src, staging = roots
    rel = samples.make_calibration_run(src)
    (tmp_path / "secret").write_text("do not ingest")
    os.symlink(tmp_path / "secret", src / rel / "products" / "evil.tbl")
    with pytest.raises(UserError, match="outside"):
        collect_calibration(src, rel, staging, "r")


@pytest.mark.parametrize("request_id", ["../escape", "/tmp/abs", "..", "a/../../x", "."])
def test_staging_path_outside_the_staging_root(roots, request_id) -> None:
    src, staging = roots
    rel = samples.make_calibration_run(src)
    with pytest.raises(UserError):
        collect_calibration(src, rel, staging, request_id)
    assert (src / rel / "products").is_dir()  # nothing was removed on the way out


def test_missing_source(roots) -> None:
    src, staging = roots
    with pytest.raises(UserError, match="does not exist"):
        collect_image(src, "nope", staging, "r")


_UNREADABLE_SCRIPT = """
import sys
from flows.nrao.collectors import collect_calibration
from tasks.errors import UserError
try:
    collect_calibration(sys.argv[1], "run", sys.argv[2], "req")
except UserError as exc:
    print("USERERROR", exc)
"""


def _drop_file_capabilities() -> None:
    """preexec: as root, lose CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH for the exec'd child.

    Root then obeys permission bits like anyone else, while staying root: it can still run an
    interpreter that lives in root's own 0700 home (a virtualenv's python is a symlink there),
    which the user 'nobody' cannot.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def _venv_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh virtualenv's interpreter (seeing this environment's packages), as a user's venv would be."""
    import venv

    where = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=True, with_pip=False, symlinks=True).create(where)
    return str(where / "bin" / "python")


@pytest.mark.parametrize("interpreter", ["this", "venv"])
def test_unreadable_source_directory(interpreter: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """An unreadable run directory is a clear user error, whichever interpreter runs the collector.

    Permission bits do not stop root, so as root the child runs without the capabilities that
    bypass them (still root, so any interpreter root can run works: the system one or a venv's).
    """
    python = sys.executable if interpreter == "this" else _venv_python(tmp_path_factory)
    scratch = Path(tempfile.mkdtemp(prefix="nrao-perm-"))
    try:
        src, staging, home = scratch / "src", scratch / "staging", scratch / "home"
        for d in (src, staging, home):
            d.mkdir()
        samples.make_calibration_run(src, "run")
        os.chmod(src / "run", 0)
        env = {**os.environ, "INGEST_HOME": str(home), "PYTHONPATH": str(ROOT)}
        kwargs = {"preexec_fn": _drop_file_capabilities} if os.geteuid() == 0 else {}
        out = subprocess.run([python, "-c", _UNREADABLE_SCRIPT, str(src), str(staging)], env=env,
                             cwd=str(scratch), capture_output=True, text=True, timeout=60, **kwargs)
        assert "USERERROR" in out.stdout and "not readable" in out.stdout, out.stdout + out.stderr
    finally:
        os.chmod(scratch / "src" / "run", 0o755)
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
