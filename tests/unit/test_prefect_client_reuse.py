"""What a CLI call no longer pays per Prefect client or per flow run (tasks/prefect_client_reuse.py)."""
from __future__ import annotations

import ssl

import pytest

import tasks.prefect_support  # noqa: F401  (installs the reuse, as every process running our tasks does)
from tasks import prefect_client_reuse


def test_api_clients_share_one_tls_context(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # the first one may build it
        client.hello()
    built = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: built.append(1) or real(*a, **k))
    for _ in range(3):
        with get_client(sync_client=True) as client:
            assert client.hello().status_code == 200
    assert built == []


def test_a_client_given_its_own_verify_keeps_it(prefect_api: str) -> None:
    mine = ssl.create_default_context()
    assert prefect_client_reuse.with_shared_tls({"verify": mine})["verify"] is mine
    assert prefect_client_reuse.with_shared_tls(None)["verify"] is not mine


def test_the_servers_result_storage_is_read_once(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import results
    from prefect.client.orchestration import SyncPrefectClient

    reads = []
    real = SyncPrefectClient.read_server_default_result_storage
    monkeypatch.setattr(SyncPrefectClient, "read_server_default_result_storage",
                        lambda self: reads.append(1) or real(self))
    prefect_client_reuse._storage.clear()
    answers = {results._read_server_default_result_storage_block_id() for _ in range(3)}
    assert len(reads) == 1 and len(answers) == 1
    prefect_client_reuse._storage.clear()  # (after the TTL: read afresh)
    results._read_server_default_result_storage_block_id()
    assert len(reads) == 2


def test_the_csrf_probe_is_asked_once(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client import base
    from prefect.client.orchestration import get_client

    probes = []
    real = base.PrefectHttpxSyncClient.send

    def send(self, request, *args, **kwargs):
        if "/csrf-token" in str(request.url):
            probes.append(1)
        return real(self, request, *args, **kwargs)

    monkeypatch.setattr(base.PrefectHttpxSyncClient, "send", send)
    prefect_client_reuse._no_csrf.clear()
    for _ in range(3):
        with get_client(sync_client=True) as client:
            client.read_flows(limit=1)  # a POST: the first write of a client asks for a token
    assert len(probes) == 1
