"""The keyserver over HTTP (token, TTL cache, unknown key id) and the inbox notifications."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.ega.keyserver import UNRELATED_KEY, HttpKeySource, key_ids_of
from tasks.errors import UserError


@pytest.fixture
def keyserver(ega_keys):
    """A LocalEGA-style keyserver on loopback: GET /retrieve/pgp/<keyid> with a bearer token."""
    armored = ega_keys.pgp_sec.read_text()
    held = key_ids_of(armored)
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            if self.headers.get("Authorization") != "Bearer s3cret":
                self.send_response(401)
                self.end_headers()
                return
            key_id = self.path.rsplit("/", 1)[-1]
            if not self.path.startswith("/retrieve/pgp/") or key_id not in held:
                self.send_response(404)
                self.end_headers()
                return
            body = json.dumps({"id": key_id, "private": armored, "passphrase": ega_keys.passphrase}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", held, hits
    server.shutdown()


def test_http_keyserver_token_cache_and_unknown_key(keyserver) -> None:
    from tasks.keys import load_pgp_private_key

    url, held, hits = keyserver
    key_id = sorted(held)[0]
    source = HttpKeySource(url, token="s3cret", ttl=60)
    material = source.private_key(key_id)
    assert load_pgp_private_key(material.armored, material.passphrase).key_ids >= {key_id}
    source.private_key(key_id.lower())
    assert hits == [f"/retrieve/pgp/{key_id}"]  # the second lookup came from the cache
    with pytest.raises(UserError, match=UNRELATED_KEY):
        source.private_key("0123456789ABCDEF")
    expired = HttpKeySource(url, token="s3cret", ttl=0)
    expired.private_key(key_id)
    expired.private_key(key_id)
    assert len(hits) == 4
    with pytest.raises(Exception) as err:  # a wrong token is our configuration, not the submitter's fault
        HttpKeySource(url, token="wrong").private_key(key_id)
    assert not isinstance(err.value, UserError) and "401" in str(err.value)


@pytest.mark.integration
@pytest.mark.prefect
def test_ingest_with_the_http_keyserver(ega_env, gpg, keyserver, pg_dsn: str, amqp_url: str) -> None:
    from blocks.keyserver import KeyserverBlock
    from pydantic import SecretStr
    from tests.ega.conftest import save_blocks
    from tests.ega.test_ega_flow import submit

    url, _, hits = keyserver
    name = ega_env.name + "-http"
    save_blocks(name, pg_dsn=pg_dsn, amqp_url=amqp_url, cega=ega_env.cega, lega=ega_env.lega, keys=ega_env.keys,
                vault_root=ega_env.vault_root, keyserver_url=url)
    KeyserverBlock(url=url, token=SecretStr("s3cret"), c4gh_public_key=str(ega_env.keys.c4gh_pub)).save(
        name, overwrite=True)
    msg, _ = submit(ega_env, gpg, b"via the keyserver\n", "--compress-algo", "none")
    from flows.ega.cli import run_message

    code, summary = run_message(msg, config_block=name)
    assert code == 0, summary
    assert len(hits) == 1


@pytest.mark.integration
@pytest.mark.prefect
def test_notify_inbox_announces_new_and_changed_files_once(ega_env, gpg) -> None:
    from flows.ega.inbox_notify import notify_inbox

    user_dir = ega_env.inbox / ega_env.user
    user_dir.mkdir(parents=True, exist_ok=True)
    upload = user_dir / "run1" / "reads.bam.gpg"
    upload.parent.mkdir()
    upload.write_bytes(b"\x85encrypted bytes")
    (user_dir / "run1" / "reads.bam.gpg.md5").write_text("d41d8cd98f00b204e9800998ecf8427e  reads.bam.gpg\n")
    first = notify_inbox(user=ega_env.user, config_block=ega_env.name)
    assert first["count"] == 2
    msgs = {rk: body for rk, body, _ in ega_env.messages("cega")}
    assert msgs["files.inbox"] == {"user": ega_env.user, "filepath": "run1/reads.bam.gpg", "filesize": 16,
                                   "encrypted_integrity": {"algorithm": "sha256",
                                                           "checksum": hashlib.sha256(upload.read_bytes()).hexdigest()}}
    assert msgs["files.inbox.checksums"] == {"user": ega_env.user, "filepath": "run1/reads.bam.gpg.md5",
                                             "content": "d41d8cd98f00b204e9800998ecf8427e  reads.bam.gpg\n"}
    assert notify_inbox(user=ega_env.user, config_block=ega_env.name)["count"] == 0  # nothing new
    upload.write_bytes(b"\x85re-uploaded, longer bytes")
    again = notify_inbox(user=ega_env.user, config_block=ega_env.name)
    assert [p["filepath"] for p in again["published"]] == ["run1/reads.bam.gpg"]
