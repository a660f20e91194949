"""The Prefect settings printed for a server address (docs/operations.md, section 2)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deployments.server_settings import settings_for

ROOT = Path(__file__).resolve().parents[2]


def test_direct_address_sets_the_ui_api_url_to_what_browsers_use() -> None:
    assert settings_for("http://archive.example.org:4300") == {
        "PREFECT_SERVER_API_HOST": "0.0.0.0", "PREFECT_SERVER_API_PORT": "4300",
        "PREFECT_UI_API_URL": "http://archive.example.org:4300/api",
        "PREFECT_API_URL": "http://archive.example.org:4300/api"}


def test_behind_a_proxy_under_a_path() -> None:
    out = settings_for("https://example.org/prefect/api")
    assert out["PREFECT_UI_API_URL"] == "https://example.org/prefect/api"
    assert out["PREFECT_UI_SERVE_BASE"] == "/prefect/" and out["PREFECT_SERVER_API_PORT"] == "4200"


def test_not_an_address() -> None:
    with pytest.raises(ValueError):
        settings_for("ftp://x")


def test_cli_prints_export_lines_without_starting_anything(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "flows" / "run.py"), "server-settings", "10.0.0.5:4200",
                           "--format", "env"], env={"PATH": "/usr/bin:/bin", "INGEST_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "export PREFECT_UI_API_URL=http://10.0.0.5:4200/api" in proc.stdout
    assert not (tmp_path / "prefect" / "api.json").exists() and "temporary server" not in proc.stderr
