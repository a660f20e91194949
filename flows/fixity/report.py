"""The fixity run's Markdown artifact: what was checked, what failed, what the budget left for next time."""
from __future__ import annotations

from typing import Any


def fixity_markdown(summary: dict[str, Any]) -> str:
    failures = summary.get("failures", [])
    lines = [
        f"# Fixity audit: {'FAILED' if failures else 'ok'}",
        "",
        f"- checked: {summary.get('checked', 0)} object(s), {summary.get('bytes_read', 0):,} bytes read",
        f"- failed: {len(failures)}",
        f"- still due after this run: {summary.get('remaining', 0)} (budget {summary.get('budget_bytes', 0):,} bytes)",
        f"- domains: {', '.join(summary.get('domains', [])) or 'none'}"
        + (f"; skipped (another run holds them): {', '.join(summary['skipped_domains'])}"
           if summary.get("skipped_domains") else ""),
        "",
        "| domain | objects | bytes |",
        "|---|---|---|",
    ]
    for domain, d in sorted(summary.get("by_domain", {}).items()):
        lines.append(f"| {domain} | {d['objects']} | {d['bytes']:,} |")
    if failures:
        lines += ["", "## Failed checks (marked for review)", "", "| domain | object | problem | detail |",
                  "|---|---|---|---|"]
        for f in failures[:200]:
            detail = str(f.get("detail") or "").replace("|", "\\|")[:300]
            lines.append(f"| {f['domain']} | {f['subject']} | {f['problem']} | {detail} |")
    return "\n".join(lines) + "\n"
