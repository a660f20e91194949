"""Found by the kill loop (bench/kill_loop.py): an NRAO run killed after ``record-in-registry`` and before
``notify-completed`` has its product in NGAS and in the registry, but nobody was told. The same command
run again must tell them, once, that it completed; it used to refuse the request as "already ingested"
(exit 1) and announce ``nrao.ingest.failed``, so subscribers heard a failure for an ingested product and
never a completion. A later duplicate request is still refused, without a second completion."""
from __future__ import annotations

import pytest
from test_nrao_flow import NraoEnv, nrao_env, observation  # noqa: F401 - nrao_env: a fixture

pytestmark = [pytest.mark.integration, pytest.mark.prefect]


class Killed(BaseException):
    """Stands for SIGKILL: nothing of ours after this point runs (the task's retries neither)."""


def test_killed_between_record_and_notice_the_rerun_announces_completion_once(nrao_env, monkeypatch) -> None:  # noqa: F811
    import flows.nrao.flow as nrao_flow

    env: NraoEnv = nrao_env(amqp=False)
    argv, source = observation(env)
    real_notice = nrao_flow.report_completed

    def die(*args, **kwargs):
        raise Killed()

    monkeypatch.setattr(nrao_flow, "report_completed", die)
    with pytest.raises(Killed):
        env.run(*argv)
    monkeypatch.setattr(nrao_flow, "report_completed", real_notice)
    recorded = env.sql("SELECT locator FROM nrao_products WHERE product_group = %s", f"observation:{source}")
    assert len(recorded) == 1 and env.messages() == []
    pushes = len(env.archives())

    code, summary = env.run(*argv)
    assert code == 0 and summary["state"] == "COMPLETED", summary
    assert [p["locator"] for p in summary["products"]] == [recorded[0]["locator"]]
    assert summary["files"] and all(f["version"] == 1 for f in summary["files"])
    assert len(env.archives()) == pushes  # nothing pushed again
    assert [key for key, _ in env.messages()] == ["nrao.ingest.completed"]

    code, again = env.run(*argv)  # a duplicate request now: refused as before, and no second completion
    assert code == 1 and "already ingested" in again["error"], again
    assert [key for key, _ in env.messages()] == ["nrao.ingest.completed", "nrao.ingest.failed"]
