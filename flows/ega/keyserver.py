"""Where the archive's private OpenPGP keys come from: a keyserver over HTTP or a local key file.

The recipient key id is read from the file's PKESK packet first, so we only ask
for the key we need; a key id the archive does not hold is the submitter's
mistake ("encrypted with an unrelated key"), a keyserver that is down is not.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from tasks.errors import UserError

UNRELATED_KEY = "encrypted with an unrelated key"


@dataclass(frozen=True)
class KeyMaterial:
    key_id: str
    armored: str
    passphrase: str | None


class KeySource(Protocol):
    def private_key(self, key_id: str) -> KeyMaterial: ...


def key_ids_of(armored: str) -> set[str]:
    """Key ids (16 hex, upper case) of a key and all its subkeys."""
    import warnings

    import pgpy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key, _ = pgpy.PGPKey.from_blob(armored)
    ids = {key.fingerprint.keyid.upper()}
    ids.update(k.upper() for k in key.subkeys)
    return ids


class FileKeySource:
    """One armored private key on disk (the embedded default: $INGEST_HOME/keys/ega.sec.asc)."""

    def __init__(self, path: str | Path, passphrase: str | None) -> None:
        self.path = Path(path)
        self.passphrase = passphrase
        self._armored: str | None = None
        self._ids: set[str] = set()

    def private_key(self, key_id: str) -> KeyMaterial:
        if self._armored is None:
            self._armored = self.path.read_text()
            self._ids = key_ids_of(self._armored)
        if key_id.upper() not in self._ids and key_id.strip("0"):  # all zeros: recipient hidden, try ours
            raise UserError(UNRELATED_KEY)
        return KeyMaterial(key_id.upper(), self._armored, self.passphrase)


class HttpKeySource:
    """LocalEGA-style keyserver: ``GET <url>/retrieve/pgp/<keyid>`` with a token, cached for ``ttl`` seconds.

    The reply is either JSON ``{"private": <armored>, "passphrase": <str>}`` or the
    armored key as text (its passphrase then comes from our configuration).
    """

    def __init__(self, url: str, *, token: str | None = None, passphrase: str | None = None,
                 ttl: float = 300.0, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.passphrase = passphrase
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, KeyMaterial]] = {}
        self._lock = threading.Lock()

    def private_key(self, key_id: str) -> KeyMaterial:
        key_id = key_id.upper()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key_id)
            if hit and hit[0] > now:
                return hit[1]
        headers = {"Accept": "application/json, text/plain"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        resp = httpx.get(f"{self.url}/retrieve/pgp/{key_id}", headers=headers, timeout=self.timeout)
        if resp.status_code == 404:
            raise UserError(UNRELATED_KEY)
        resp.raise_for_status()  # 401/5xx: our configuration or the server, never the submitter
        material = _parse_reply(key_id, resp, self.passphrase)
        with self._lock:
            self._cache[key_id] = (now + self.ttl, material)
        return material


def _parse_reply(key_id: str, resp: httpx.Response, passphrase: str | None) -> KeyMaterial:
    text = resp.text
    if "json" in resp.headers.get("content-type", "") or text.lstrip().startswith("{"):
        body = json.loads(text)
        armored = body.get("private") or body.get("private_key") or body.get("key")
        if not armored:
            raise RuntimeError(f"keyserver reply for {key_id} carries no private key")
        return KeyMaterial(key_id, armored, body.get("passphrase", passphrase))
    return KeyMaterial(key_id, text, passphrase)
