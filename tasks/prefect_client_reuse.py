"""Two things Prefect 3.8 redoes on every use that a one-shot CLI call pays for in full.

* **A TLS context per API client.** Every ``PrefectClient``/``SyncPrefectClient`` builds a verifying
  ``ssl.SSLContext`` from certifi's bundle (~40 ms each, two or three clients per call), even for an
  ``http://`` API. One context per CA file is built once per process (the warm runner builds it
  before forking, so its calls inherit it) and handed to every client. A client given its own
  ``verify``, or ``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``, is left to Prefect.
* **The server's default result storage, read on every flow run** (``GET /admin/storage``, three times
  per run here). It is read once per process per ``RESULT_STORAGE_TTL`` seconds and API URL.
* **The CSRF probe.** Each client's first write asks ``/csrf-token``; a server without CSRF
  protection (Prefect's default) answers 422 and the client stops asking. The answer is kept per
  process and API URL, so the next client does not ask again.

Both are behaviour-preserving: the same CA file verifies the same way, and the server's setting is
still honoured (read afresh after the TTL, which only a long-lived process outlives).
"""
from __future__ import annotations

import ssl
import threading
import time
from typing import Any

RESULT_STORAGE_TTL = 30.0
_contexts: dict[str, ssl.SSLContext] = {}
_storage: dict[str, tuple[float, Any]] = {}
_no_csrf: set[str] = set()  # API base URLs whose server said CSRF protection is off
_lock = threading.Lock()
_installed: list[bool] = []


def shared_tls_context(cafile: str) -> ssl.SSLContext:
    with _lock:
        ctx = _contexts.get(cafile)
        if ctx is None:
            ctx = _contexts[cafile] = ssl.create_default_context(cafile=cafile)
        return ctx


def _default_cafile() -> str | None:
    """The CA file Prefect would verify with, or None when Prefect must build the context itself."""
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
        return None
    cert_file = PREFECT_API_SSL_CERT_FILE.value()
    if cert_file:
        return str(cert_file)
    import certifi

    return certifi.where()


def with_shared_tls(httpx_settings: dict[str, Any] | None) -> dict[str, Any] | None:
    if httpx_settings and "verify" in httpx_settings:
        return httpx_settings
    cafile = _default_cafile()
    if cafile is None:
        return httpx_settings
    return {**(httpx_settings or {}), "verify": shared_tls_context(cafile)}


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "")


def _memo_sync(original: Any) -> Any:
    def read() -> Any:
        key, now = _api_url(), time.monotonic()
        hit = _storage.get(key)
        if hit is not None and now - hit[0] < RESULT_STORAGE_TTL:
            return hit[1]
        value = original()
        _storage[key] = (now, value)
        return value

    read.__wrapped__ = original
    return read


def _memo_async(original: Any) -> Any:
    async def read() -> Any:
        key, now = _api_url(), time.monotonic()
        hit = _storage.get(key)
        if hit is not None and now - hit[0] < RESULT_STORAGE_TTL:
            return hit[1]
        value = await original()
        _storage[key] = (now, value)
        return value

    read.__wrapped__ = original
    return read


def _remember_no_csrf_sync(original: Any) -> Any:
    def add(self: Any, request: Any) -> None:
        base = str(self.base_url)
        if base in _no_csrf:
            self.enable_csrf_support = False
            return
        original(self, request)
        if not self.enable_csrf_support:
            _no_csrf.add(base)

    add.__wrapped__ = original
    return add


def _remember_no_csrf_async(original: Any) -> Any:
    async def add(self: Any, request: Any) -> None:
        base = str(self.base_url)
        if base in _no_csrf:
            self.enable_csrf_support = False
            return
        await original(self, request)
        if not self.enable_csrf_support:
            _no_csrf.add(base)

    add.__wrapped__ = original
    return add


def install(*, prebuild: bool = False) -> None:
    """Patch Prefect's client classes and result-storage lookup once per process. ``prebuild``: build
    the default TLS context now (the warm runner, before it forks)."""
    if prebuild:
        cafile = _default_cafile()
        if cafile is not None:
            shared_tls_context(cafile)
    with _lock:
        if _installed:
            return
        _installed.append(True)
    from prefect import results
    from prefect.client import base, orchestration

    for cls, remember in ((base.PrefectHttpxSyncClient, _remember_no_csrf_sync),
                          (base.PrefectHttpxAsyncClient, _remember_no_csrf_async)):
        cls._add_csrf_headers = remember(cls._add_csrf_headers)  # type: ignore[method-assign]

    for cls in (orchestration.PrefectClient, orchestration.SyncPrefectClient):
        original = cls.__init__

        def __init__(self: Any, api: Any, *args: Any, _original: Any = original,
                     httpx_settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
            _original(self, api, *args, httpx_settings=with_shared_tls(httpx_settings), **kwargs)

        __init__.__wrapped__ = original  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]
    for name, memo in (("_read_server_default_result_storage_block_id", _memo_sync),
                       ("_aread_server_default_result_storage_block_id", _memo_async)):
        original = getattr(results, name, None)
        if original is not None:
            setattr(results, name, memo(original))
