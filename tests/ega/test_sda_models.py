"""Our models of the SDA messages say what the SDA schemas say (no services needed)."""
from __future__ import annotations

import pytest

from flows.ega import legacy_models
from flows.ega import sda_messages as sda
from tasks.errors import UserError

SHA = "a" * 64
MD5 = "b" * 32


def test_verbatim_trigger_without_stable_id_is_accepted() -> None:
    trig = sda.parse_inbound({"type": "ingest", "user": "jane@example.org", "filepath": "dir/reads.bam.c4gh",
                              "encrypted_checksums": [{"type": "sha256", "value": SHA}, {"type": "md5", "value": MD5}]})
    assert isinstance(trig, sda.IngestionTrigger) and trig.type == "ingest"
    cancel = sda.parse_inbound({"type": "cancel", "user": "jane", "filepath": "dir/reads.bam.c4gh"})
    assert cancel.type == "cancel"


@pytest.mark.parametrize("raw, words", [
    ({"user": "jane", "filepath": "f.c4gh"}, "type must be one of"),
    ({"type": "ingest", "user": "j", "filepath": "f.c4gh"}, "user"),  # minLength 2
    ({"type": "ingest", "user": "jane", "filepath": "f.c4gh",
      "encrypted_checksums": [{"type": "sha256", "value": MD5}]}, "encrypted_checksums"),
    ({"type": "ingest", "user": "jane", "filepath": "f.c4gh",
      "encrypted_checksums": [{"type": "sha1", "value": SHA}]}, "encrypted_checksums"),
    ({"type": "ingest", "user": "jane", "filepath": "f.c4gh",
      "encrypted_checksums": [{"type": "md5", "value": MD5, "extra": 1}]}, "extra"),
    ({"type": "accession", "user": "jane", "filepath": "f.c4gh", "accession_id": "EGAF123",
      "decrypted_checksums": [{"type": "sha256", "value": SHA}]}, "accession_id"),
    ({"type": "accession", "user": "jane", "filepath": "f.c4gh", "accession_id": "EGAF00000000001"},
     "decrypted_checksums"),
    ({"type": "ingest", "user": 12, "filepath": "f.c4gh"}, "user"),
])
def test_inbound_refusals(raw: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        sda.parse_inbound(raw)


def test_emitted_models_are_as_strict_as_the_schemas() -> None:
    good = {"user": "jane", "filepath": "f.c4gh", "file_id": "7c0e…", "archive_path": "ega/sda/x.c4gh",
            "encrypted_checksums": [{"type": "sha256", "value": SHA}], "re_verify": False}
    sda.check_emitted("archived", good)
    for bad in ({**good, "file_id": 7}, {**good, "re_verify": "false"}, {k: v for k, v in good.items() if k != "re_verify"}):
        with pytest.raises(ValueError):
            sda.check_emitted("archived", bad)
    with pytest.raises(ValueError, match="sha256"):  # accession requests and completions must carry a sha256
        sda.check_emitted("verified", {"user": "u", "filepath": "f", "decrypted_checksums": [{"type": "md5", "value": MD5}]})
    sda.check_emitted("error", {"error": "e", "reason": "r", "original-message": "{}"})
    with pytest.raises(ValueError):
        sda.check_emitted("error", {"error": "e", "reason": "", "original-message": "{}"})
    sda.check_emitted("inbox", {"user": "u", "filepath": "f.c4gh", "oldpath": "g.c4gh", "operation": "rename"})
    with pytest.raises(ValueError):
        sda.check_emitted("inbox", {"user": "u", "filepath": "f.c4gh", "operation": "rename"})
    with pytest.raises(ValueError):
        sda.check_emitted("files.completed", {"user": "u"})


def test_legacy_messages_do_not_pass_for_sda() -> None:
    """What the issue measured: our legacy bodies fail the SDA schemas; the two protocols are kept apart."""
    completed = {"user": "u", "filepath": "f.c4gh", "stable_id": "EGAF00000000001",
                 "status": {"state": "COMPLETED", "details": "File ingested, refer to it with EGAF00000000001"}}
    legacy_models.check_emitted("files.completed", completed)
    with pytest.raises(ValueError, match="accession_id"):
        sda.check_emitted("completed", completed)
    archived = {"user": "u", "filepath": "f", "stable_id": "EGAF00000000001", "file_id": 3, "archive_uri": "file:///x",
                "archive_size": 10, "archive_checksum": {"type": "sha256", "value": SHA},
                "decrypted_checksums": [{"type": "sha256", "value": SHA}, {"type": "md5", "value": MD5}]}
    legacy_models.check_emitted("archived", archived)
    with pytest.raises(ValueError, match="file_id"):
        sda.check_emitted("archived", archived)
    with pytest.raises(ValueError):
        legacy_models.check_emitted("files.completed", {**completed, "status": {"state": "ERROR", "details": "x"}})
