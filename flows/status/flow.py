"""The scheduled ``archive-status`` run: the ``status`` report as a Markdown artifact in the UI."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.outcome import dated
from flows.status.report import DEFAULT_STUCK_AFTER, build_status, render_markdown


@flow(name="archive-status", flow_run_name=dated("archive-status"), description="Per archive: stored objects and bytes, in progress and stuck ingests, "
                                          "failures by reason and kind, fixity and review; as a Markdown artifact.")
def archive_status(stuck_after: str = DEFAULT_STUCK_AFTER, config_block: str = "default") -> dict[str, Any]:
    from prefect.artifacts import create_markdown_artifact

    status = status_report(config_block, stuck_after)
    create_markdown_artifact(markdown=render_markdown(status), key="archive-status",
                             description="Archive status across EGA, APT, FITS and NRAO")
    return status


def status_report(config_block: str = "default", stuck_after: str = DEFAULT_STUCK_AFTER,
                  domains: list[str] | None = None) -> dict[str, Any]:
    from blocks.register import load_block
    from blocks.registry import RegistryBlock
    from flows.fixity.plan import parse_older_than

    with load_block(RegistryBlock, config_block).open() as registry:
        return build_status(registry, stuck_after=parse_older_than(stuck_after), domains=domains)
