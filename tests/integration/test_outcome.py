"""The one failure path every flow shares, and the reports operators read in the UI."""
from __future__ import annotations

import logging

import pytest

from flows.reporting import checksum_rows, format_time, human_size, render_report
from tasks.errors import UserError


def test_report_is_readable_sizes_checksums_times_and_events_in_full() -> None:
    text = render_report(
        "EGA ingest: EGAF1", "Completed",
        {"stable_id": "EGAF1", "vault_uri": "file:///v/x.c4gh", "archive_size": 536870912,
         "checksums": {"encrypted": {"md5": "m5", "sha256": "s256"}, "archived": {"sha256": "c4"}},
         "hdus": [{"index": 0, "name": "PRIMARY", "shape": "(2, 3)"}, {"index": 1, "name": "IMG"}]},
        context={"submitter": "alice@example.org", "source": "alice/run1.bam.gpg"},
        events=[{"occurred_at": "2026-11-30T04:41:44.123456+00:00", "event_type": "ingestion", "subject": "x",
                 "outcome": "failure", "detail": "first line | with a pipe\nsecond line", "outcome_detail": "why"}])
    assert "| **archive_size** | 512.0 MiB (536,870,912 bytes) |" in text
    assert "| **submitter** | alice@example.org |" in text and "| **source** | alice/run1.bam.gpg |" in text
    assert "| md5 | `m5` | the upload as received (OpenPGP) |" in text
    assert "| sha256 | `c4` | the Crypt4GH copy in the vault |" in text
    assert "{'" not in text and "'md5'" not in text  # no Python dicts
    assert "| index | name | shape |" in text and "| 1 | IMG | — |" in text
    assert "| 2026-11-30 04:41:44 UTC | ingestion | x | failure | first line \\| with a pipe<br>second line<br>why |" \
        in text


def test_units_and_times() -> None:
    assert human_size(1023) == "1,023 bytes"
    assert human_size(3 << 30) == "3.0 GiB (3,221,225,472 bytes)"
    assert format_time("2026-01-02T03:04:05.678+01:00") == "2026-01-02 02:04:05 UTC"
    assert checksum_rows({"sha256": "a", "md5": ""}) == [("sha256", "a", "the file")]


def _run_logs(client, flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return [log.message for log in client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


def _artifact(client, key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                  sort=ArtifactSort.CREATED_DESC, limit=1)  # the newest under the key
    assert found, f"no artifact {key}"
    return found[0].data


@pytest.mark.prefect
@pytest.mark.parametrize("kind", ["user", "system"])
def test_failed_run_has_a_report_a_name_and_one_line_for_bad_input(prefect_api, unique: str, kind: str) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.outcome import failure_path, name_run, parameter, run_name
    from flows.reporting import artifact_key
    from tasks.prefect_support import ingest_task

    cleaned_by_domain: list[str] = []

    def check(value: str) -> str:
        if kind == "user":
            raise UserError(f"tag Access has illegal value {value!r}")
        raise OSError(28, "No space left on device")

    checked = ingest_task(check, name="validate-bag", retries=0)

    @flow(flow_run_name=lambda: run_name("test", f"wi{parameter('item')}"))
    def ingest(item: str) -> None:
        with failure_path("test", lambda: f"bag-{item}", resubmit="upload a corrected bag",
                          context=lambda: {"submitter": "inst.edu", "source": f"{item}.tar"},
                          on_failure=lambda exc, user_error: cleaned_by_domain.append(user_error)
                          or [f"staging of {item}"]):
            name_run(run_name("test", f"inst.edu/{item}"))
            checked("acksess")

    state = ingest(unique, return_state=True)
    assert state.is_failed()
    assert cleaned_by_domain == [kind == "user"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.name == f"test-inst.edu.{unique}"
        report = _artifact(client, artifact_key("test", f"bag-{unique}"))
        from flows.cli_common import drain_prefect_workers

        drain_prefect_workers()
        logs = _run_logs(client, run.id)
    assert "| **failed step** | validate-bag |" in report
    assert f"| **cleaned up** | staging of {unique} |" in report
    assert f"| **source** | {unique}.tar |" in report
    if kind == "user":
        assert "**Failed (user error)**" in report
        assert "| **reason** | tag Access has illegal value 'acksess' |" in report
        assert "upload a corrected bag" in report
        assert "rejected: tag Access has illegal value 'acksess'" in logs
        assert not [m for m in logs if "Traceback" in m or "Encountered exception" in m]
    else:
        assert "**Failed (system error)**" in report
        assert "No space left on device" in report and "new attempt" in report
        assert any(m.startswith("system error in step validate-bag: OSError") for m in logs)
        assert any("Traceback" in m for m in logs)  # the UI keeps a system error's traceback


def test_rejected_input_filter_makes_one_line() -> None:
    from tasks.run_logging import RejectedInputFilter

    try:
        raise RuntimeError("wrapped") from UserError("bad checksum")
    except RuntimeError as exc:
        record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1,
                                   "Task run failed with exception: %r", (exc,), (type(exc), exc, exc.__traceback__))
    assert RejectedInputFilter().filter(record)
    assert record.getMessage() == "rejected: bad checksum" and record.exc_info is None


@pytest.mark.localapi
def test_a_user_error_in_each_domain_is_one_line_on_the_cli(ingest_home, tmp_path) -> None:
    """No traceback on stderr, the JSON result on stdout, exit 1: EGA, APT, FITS and NRAO as a user runs them."""
    import io
    import json as jsonlib
    import tarfile

    from tests.integration.test_local_api import cli

    message = tmp_path / "m.json"
    message.write_text(jsonlib.dumps({"user": "nobody", "filepath": "missing.c4gh.gpg", "stable_id": "EGAF00000000001",
                                      "encrypted_integrity": {"checksum": "0" * 32, "algorithm": "md5"}}))
    bag = tmp_path / "test.edu.nobag.tar"
    with tarfile.open(bag, "w") as tar:  # a tar that is not a bag: no bagit.txt
        info = tarfile.TarInfo("test.edu.nobag/readme.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    not_fits = ingest_home / "science" / "cube.fits"
    not_fits.parent.mkdir(parents=True, exist_ok=True)
    not_fits.write_bytes(b"not a FITS file\n" * 10)
    cases = {
        "ega": ["ega", "--message", str(message)],
        "apt": ["apt", str(bag), "--institution", "test.edu"],
        "fits": ["fits", "cube.fits"],
        "nrao": ["nrao", "--calibration", "no-such-run"],
    }
    assert cli(ingest_home, "init").returncode == 0
    for domain, argv in cases.items():
        proc = cli(ingest_home, *argv)
        assert proc.returncode == 1, (domain, proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (domain, proc.stderr[-3000:])
        errors = [line for line in proc.stderr.splitlines() if "| ERROR" in line]
        assert len(errors) == 1 and "rejected: " in errors[0], (domain, proc.stderr[-3000:])
        out = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert len(out) == 1 and jsonlib.loads(out[0]), (domain, proc.stdout)


def test_previews_are_images_when_the_ui_can_load_them_and_links_otherwise() -> None:
    text = render_report("FITS ingest: o", "Completed", {"oid": "o"},
                         images=[("image preview", "https://previews.example.org/o.jpg"),
                                 ("thumbnail preview", "file:///srv/previews/o.thumb.png")])
    assert "![image preview](https://previews.example.org/o.jpg)" in text
    assert "[thumbnail preview](file:///srv/previews/o.thumb.png)" in text
    assert "![thumbnail preview]" not in text
