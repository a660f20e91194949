"""botocore's parsed model files, shared by every boto3 session a process creates.

Each boto3 ``Session`` gets a fresh botocore data loader, and its first S3 client parses the
service's JSON files again: the S3 model, the endpoint rule set (the largest by far), endpoints,
partitions, the retry and default-configuration files. That is ~0.22 s of JSON decoding per new
session, measured here in every warm runner fork of an EGA call on an S3 vault (prefect-aws and
``S3Vault`` each make their own session), a quarter of such a call.

``prebuild()`` (the warm runner, before it forks) loads those files once through a boto3 session and
keeps the loader's cache; ``install()`` makes every later loader on botocore's default data path
start from a copy of it. Within one botocore session, every client already receives these same
cached objects, so sharing them between sessions of one process changes nothing about what a
client sees. A session with ``AWS_DATA_PATH`` set (its own model files) gets an empty cache, as
before. Nothing here is needed for correctness: if botocore's internals move, both functions
do nothing and each session parses its files, as it did.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

PREBUILT_SERVICES = ("s3",)
_seed: dict[Any, Any] = {}
_lock = threading.Lock()
_installed: list[bool] = []


def install() -> bool:
    """Seed every new default-path data loader from what ``prebuild`` parsed. Idempotent."""
    with _lock:
        if _installed:
            return True
        try:
            import botocore.loaders
            import botocore.session
        except ImportError:
            return False
        original = getattr(botocore.session, "create_loader", None)
        if original is None:
            return False

        def create_loader(search_path_string: str | None = None) -> Any:
            loader = original(search_path_string)
            cache = getattr(loader, "_cache", None)
            if _seed and search_path_string is None and isinstance(cache, dict):
                cache.update(_seed)  # the shared parsed objects; the dict itself is the loader's own
            return loader

        botocore.session.create_loader = create_loader
        _installed.append(True)
        return True


def prebuild(services: tuple[str, ...] = PREBUILT_SERVICES) -> int:
    """Parse the model files a client of each service needs, once; the number of cached entries."""
    if not install():
        return 0
    try:
        import boto3

        session = boto3.session.Session(aws_access_key_id="prebuild", aws_secret_access_key="prebuild",
                                        region_name="us-east-1")
        for service in services:
            # an endpoint of our own: the client is never used, and no request is made
            session.client(service, endpoint_url="http://127.0.0.1:9")
        cache = getattr(session._session.get_component("data_loader"), "_cache", None)
    except Exception:  # noqa: BLE001 - an optimisation: without it every session parses its own files
        log.debug("could not prebuild botocore's model files", exc_info=True)
        return 0
    if not isinstance(cache, dict):
        return 0
    with _lock:
        _seed.update(cache)
        return len(_seed)
