"""The SDA queue adapter: what the listener does with each message CEGA sends a node."""
from __future__ import annotations

import json

import pytest

from tests.ega.conftest import EgaEnv
from tests.ega.test_sda_protocol import sda_messages

pytestmark = [pytest.mark.integration, pytest.mark.prefect]

SHA = "c" * 64


def test_listener_uses_the_sda_adapter_in_sda_mode(sda_env: EgaEnv) -> None:
    from deployments.listen import build_adapter
    from deployments.sda_adapter import SdaAdapter
    from tasks.errors import UserError

    adapter = build_adapter("ega", config_block=sda_env.name)
    assert isinstance(adapter, SdaAdapter) and adapter.exchange == sda_env.cega

    trigger = {"type": "ingest", "user": "jane", "filepath": "dir/a.c4gh",
               "encrypted_checksums": [{"type": "sha256", "value": SHA}]}
    ingest = adapter.accept(json.dumps(trigger).encode(), "corr-1")
    assert ingest.parameters == {"message": trigger, "correlation_id": "corr-1"}
    cancel = adapter.accept(json.dumps({**trigger, "type": "cancel"}).encode(), "corr-1")
    assert cancel.idempotency_key != ingest.idempotency_key
    assert adapter.accept(json.dumps(trigger).encode(), "corr-1").idempotency_key == ingest.idempotency_key
    accession = {"type": "accession", "user": "jane", "filepath": "dir/a.c4gh", "accession_id": "EGAF00000000042",
                 "decrypted_checksums": [{"type": "sha256", "value": SHA}]}
    accepted = adapter.accept(json.dumps(accession).encode(), "corr-1")
    assert accepted.payload["accession_id"] == "EGAF00000000042"

    for bad in (b"{not json", json.dumps({**trigger, "stable_id": 5, "type": "archive"}).encode()):
        with pytest.raises(UserError) as refused:
            adapter.accept(bad, "corr-2")
        adapter.reject(bad, "corr-2", refused.value.message)
    assert adapter.answer_completed(ingest, "corr-1") is None
    assert adapter.answer_completed(accepted, "corr-1") == "ingestion-completion"
    sent = sda_messages(sda_env)  # each checked against our models
    assert [rk for rk, _ in sent] == ["error", "error", "completed"]
    assert sent[0][1]["original-message"] == "{not json" and sent[1][1]["error"] == "invalid message"
    assert sent[2][1]["accession_id"] == "EGAF00000000042"


def test_legacy_mode_keeps_the_legacy_adapter(ega_env: EgaEnv) -> None:
    from deployments.adapters import EgaAdapter
    from deployments.listen import build_adapter

    assert type(build_adapter("ega", config_block=ega_env.name)) is EgaAdapter
