"""``python flows/run.py server-settings URL``: the Prefect settings for a server reached at URL.

The Prefect UI is a page that calls the API from the operator's browser, at
``PREFECT_UI_API_URL``. Its default, ``http://127.0.0.1:4200/api``, is right only for a browser
on the server itself, so a server on another host or port shows "Can't connect to Server API".
This prints, for the address people and workers use, what the server binds to, what the UI
calls, and what every other process points at.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any
from urllib.parse import urlsplit

from flows.cli_common import emit


def settings_for(url: str, *, bind: str = "0.0.0.0") -> dict[str, str]:
    """``url`` is what a browser types (scheme, host, port, optional path behind a proxy)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) address: {url!r}")
    base = parts.path.rstrip("/")
    if base.endswith("/api"):
        base = base[: -len("/api")]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    public = f"{parts.scheme}://{parts.netloc}{base}"
    out = {
        "PREFECT_SERVER_API_HOST": bind,
        "PREFECT_SERVER_API_PORT": str(port if not base and parts.port else 4200),
        "PREFECT_UI_API_URL": f"{public}/api",
        "PREFECT_API_URL": f"{public}/api",
    }
    if base:  # served under a path by a reverse proxy, which forwards to the server's port 4200
        out["PREFECT_UI_SERVE_BASE"] = f"{base}/"
        out["PREFECT_SERVER_API_BASE_PATH"] = "/api"
    return out


def _command(args: argparse.Namespace) -> int:
    try:
        values = settings_for(args.url, bind=args.bind)
    except ValueError as exc:
        print(f"archive-ingest: server-settings: {exc}", file=sys.stderr)
        return 1
    if args.format == "env":
        server = ("PREFECT_SERVER_API_HOST", "PREFECT_SERVER_API_PORT", "PREFECT_UI_API_URL",
                  "PREFECT_UI_SERVE_BASE", "PREFECT_SERVER_API_BASE_PATH")
        print("# on the Prefect server machine (prefect server start)")
        for key in server:
            if key in values:
                print(f"export {key}={values[key]}")
        print("# on workers, the listener and every CLI machine")
        print(f"export PREFECT_API_URL={values['PREFECT_API_URL']}")
        return 0
    emit(_describe(values))
    return 0


def _describe(values: dict[str, str]) -> dict[str, Any]:
    return {"server": {k: v for k, v in values.items() if k != "PREFECT_API_URL"},
            "clients": {"PREFECT_API_URL": values["PREFECT_API_URL"]}}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server-settings", help="the Prefect server, UI and client settings for a server address",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("url", help="the address browsers and workers use, e.g. http://archive.example.org:4200")
    p.add_argument("--bind", default="0.0.0.0", help="interface the server listens on (default 0.0.0.0)")
    p.add_argument("--format", choices=["json", "env"], default="json",
                   help="env: shell export lines, for a systemd EnvironmentFile or a profile")
    p.set_defaults(handler=_command, needs_api=False)
