"""Status notifications: RabbitMQ with publisher confirms, an HTTP webhook, or the outbox.

A flow must tell the submitter how an ingest ended even when the broker is
down, so an unreachable transport never loses a message: it is appended to a
JSON Lines outbox under ``$INGEST_HOME/outbox`` and ``replay_outbox`` delivers
it later, in order, removing a line only after the broker confirmed it.

Delivery is at-least-once. A confirm lost with a dropped connection, or a crash
between a confirm and the outbox rewrite, sends a message twice; every message
carries a stable ``message_id`` so consumers can drop duplicates.

Failure classes decide what happens next:

* ``TransportUnavailable`` (cannot connect, connection dropped twice, webhook
  unreachable or 502/503/504): the message goes to the outbox when fallback is on.
* ``DeliveryRejected`` (the broker or webhook was reached and refused: nack,
  missing exchange, unroutable, other non-2xx): raised, never parked. Parking
  would hide a configuration error behind messages that look delivered; raising
  fails the task loudly, and Prefect's retry succeeds once the topology is fixed.

Secrets: URLs only ever reach logs and exception messages through ``redact_url``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import pika
import pika.exceptions as pex

from tasks.home import home_path

log = logging.getLogger(__name__)

OUTBOX_NAME = "notifications.jsonl"
APP_ID = "archive-ingest"
CONTENT_TYPE = "application/json"
PERSISTENT = 2  # AMQP delivery_mode: written to disk by a durable queue
WEBHOOK_UNAVAILABLE_STATUS = frozenset({502, 503, 504})
_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "secret", "token", "key", "sig", "signature",
                      "auth", "credential", "code")


def quiet_pika(level: int = logging.CRITICAL) -> None:
    """Silence pika unless someone already chose its level.

    pika logs every expected failure (refused connection, 404, returned message)
    at ERROR with tracebacks; each of those becomes one of our exceptions or one
    warning line carrying the cause, so its own lines are noise at INFO.
    """
    logger = logging.getLogger("pika")
    if logger.level == logging.NOTSET:
        logger.setLevel(level)


quiet_pika()


# --------------------------------------------------------------------------- errors


class NotifyError(Exception):
    """A notification could not be delivered. Transient unless a subclass says otherwise."""


class TransportUnavailable(NotifyError):
    """The transport could not be reached: the message belongs in the outbox."""


class BrokerUnavailable(TransportUnavailable):
    pass


class WebhookUnavailable(TransportUnavailable):
    pass


class DeliveryRejected(NotifyError):
    """The transport was reached and refused the message (a configuration problem)."""


class PublishRejected(DeliveryRejected):
    """Nacked, or the channel was closed by the broker (404 no exchange, 403 access)."""


class Unroutable(PublishRejected):
    """Mandatory publish returned by the broker: no queue is bound for this routing key."""


class WebhookRejected(DeliveryRejected):
    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class OutboxBusy(NotifyError):
    """Another process is replaying the same outbox."""


# --------------------------------------------------------------------------- secrets


def redact_url(url: str | None) -> str:
    """The URL with its password (and secret-looking query values) replaced by ``***``."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if has_password else f"{user}@{hostport}"
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, eq, _ = piece.partition("=")
            if eq and any(s in name.lower() for s in _SECRET_QUERY_KEYS):
                piece = f"{name}=***"
            pieces.append(piece)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# --------------------------------------------------------------------------- models


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Notification:
    """One status message. ``id`` and ``created_at`` survive outbox replay unchanged."""

    exchange: str
    routing_key: str
    body: dict[str, Any]
    correlation_id: str | None = None
    headers: dict[str, Any] | None = None
    id: str = field(default_factory=_new_id)
    created_at: str = field(default_factory=_now)

    def encoded_body(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def to_record(self) -> dict[str, Any]:
        """Everything needed to replay the message (the outbox line and the webhook payload)."""
        return {
            "id": self.id,
            "created_at": self.created_at,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "correlation_id": self.correlation_id,
            "headers": self.headers or {},
            "body": self.body,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Notification:
        if not isinstance(record, dict) or not isinstance(record.get("body"), dict):
            raise ValueError("outbox record must be an object with an object 'body'")
        for key in ("id", "exchange", "routing_key"):
            if not isinstance(record.get(key), str):
                raise ValueError(f"outbox record field {key!r} must be a string")
        return cls(exchange=record["exchange"], routing_key=record["routing_key"], body=record["body"],
                   correlation_id=record.get("correlation_id"), headers=record.get("headers") or None,
                   id=record["id"], created_at=record.get("created_at") or _now())

    def properties(self, app_id: str = APP_ID) -> pika.BasicProperties:
        try:
            ts = int(datetime.fromisoformat(self.created_at).timestamp())
        except ValueError:
            ts = None
        return pika.BasicProperties(
            content_type=CONTENT_TYPE, content_encoding="utf-8", delivery_mode=PERSISTENT,
            correlation_id=self.correlation_id, message_id=self.id, timestamp=ts,
            headers=self.headers or None, app_id=app_id)


@dataclass(frozen=True)
class TransportConfig:
    """Where notifications go. AMQP wins when both URLs are set; neither means the outbox."""

    amqp_url: str | None = field(default=None, repr=False)
    webhook_url: str | None = field(default=None, repr=False)
    fallback_to_outbox: bool = True
    connect_timeout: float = 5.0
    webhook_timeout: float = 10.0
    mandatory: bool = True

    def __repr__(self) -> str:  # URLs may carry passwords; reprs end up in logs
        return (f"TransportConfig(amqp_url={redact_url(self.amqp_url)!r}, "
                f"webhook_url={redact_url(self.webhook_url)!r}, "
                f"fallback_to_outbox={self.fallback_to_outbox})")


@dataclass(frozen=True)
class Delivery:
    transport: Literal["amqp", "webhook", "outbox"]
    message_id: str
    destination: str  # redacted URL, or the outbox path
    reason: str | None = None  # why it went to the outbox instead


@dataclass(frozen=True)
class ReplayResult:
    delivered: int
    remaining: int
    rejected: int = 0  # unparseable lines moved to the .rejected file
    error: str | None = None  # why the replay stopped early (redacted)

    @property
    def ok(self) -> bool:
        return self.error is None


class Sink(Protocol):
    def publish(self, message: Notification) -> None: ...


# --------------------------------------------------------------------------- AMQP

_DROPPED = (pex.AMQPConnectionError, pex.ChannelWrongStateError, ConnectionError)


def connection_parameters(amqp_url: str, connect_timeout: float = 5.0) -> pika.URLParameters:
    """URL parameters with bounded timeouts unless the URL's query sets its own."""
    params = pika.URLParameters(amqp_url)
    given = {k for k, _ in parse_qsl(urlsplit(amqp_url).query)}
    if "socket_timeout" not in given:
        params.socket_timeout = connect_timeout
    if "stack_timeout" not in given:
        params.stack_timeout = connect_timeout * 2
    if "blocked_connection_timeout" not in given:
        # A broker in a memory/disk alarm blocks publishers forever without this.
        params.blocked_connection_timeout = 30
    if "connection_attempts" not in given:
        params.connection_attempts = 1
    return params


def _connect(amqp_url: str, connect_timeout: float) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(connection_parameters(amqp_url, connect_timeout))
    except pex.AMQPConnectionError as exc:
        raise BrokerUnavailable(f"cannot connect to {redact_url(amqp_url)}: {_describe(exc)}") from exc
    except (OSError, ValueError) as exc:  # DNS failure, bad URL
        raise BrokerUnavailable(f"cannot connect to {redact_url(amqp_url)}: {type(exc).__name__}: {exc}") from exc


def _describe(exc: BaseException) -> str:
    text, name = str(exc) or repr(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


class Publisher:
    """A confirmed-publish channel kept open across many messages.

    Not thread-safe (pika's BlockingConnection is not): use one per thread.
    A dropped connection (broker restart, heartbeat timeout while the flow was
    busy decrypting) is reopened once per publish; a second failure raises
    ``BrokerUnavailable``.
    """

    def __init__(self, amqp_url: str, *, connect_timeout: float = 5.0, mandatory: bool = True,
                 app_id: str = APP_ID) -> None:
        self._url = amqp_url
        self._timeout = connect_timeout
        self._mandatory = mandatory
        self._app_id = app_id
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self.connections_opened = 0

    @property
    def destination(self) -> str:
        return redact_url(self._url)

    def __repr__(self) -> str:
        return f"Publisher({self.destination!r})"

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_channel(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._discard()
            self._connection = _connect(self._url, self._timeout)
            self.connections_opened += 1
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def publish(self, message: Notification) -> None:
        """Publish and wait for the broker's confirm; raise if it was not accepted."""
        body = message.encoded_body()
        for attempt in (1, 2):
            try:
                # BrokerUnavailable from a failed (re)connect is not in _DROPPED: it propagates.
                channel = self._ensure_channel()
                channel.basic_publish(exchange=message.exchange, routing_key=message.routing_key, body=body,
                                      properties=message.properties(self._app_id), mandatory=self._mandatory)
                return
            except pex.UnroutableError as exc:
                raise Unroutable(
                    f"message {message.id} to exchange {message.exchange!r} with routing key "
                    f"{message.routing_key!r} was returned unroutable by {self.destination}: no queue is bound "
                    f"(run the broker setup)") from exc
            except pex.NackError as exc:
                raise PublishRejected(f"message {message.id} was nacked by {self.destination}") from exc
            except pex.ChannelClosedByBroker as exc:
                self._channel = None
                raise PublishRejected(
                    f"broker {self.destination} refused message {message.id} to exchange "
                    f"{message.exchange!r}: ({exc.reply_code}) {exc.reply_text}") from exc
            except _DROPPED as exc:
                self._discard()
                if attempt == 2:
                    raise BrokerUnavailable(
                        f"connection to {self.destination} dropped twice publishing {message.id}: "
                        f"{_describe(exc)}") from exc
                log.info("connection to %s dropped (%s); reconnecting once", self.destination, _describe(exc))

    def _discard(self) -> None:
        conn, self._connection, self._channel = self._connection, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._discard()


def declare_topology(amqp_url: str, exchanges: Sequence[tuple[str, str]], queues: Sequence[str],
                     bindings: Sequence[tuple[str, str, str]], *, connect_timeout: float = 5.0) -> None:
    """Declare durable exchanges, durable queues and bindings; safe to run again.

    Redeclaring something that exists with other settings (type, durability)
    is refused by the broker with 406; we say which object it was.
    """
    conn = _connect(amqp_url, connect_timeout)
    try:
        channel = conn.channel()
        what = ""
        try:
            for name, kind in exchanges:
                what = f"exchange {name!r} ({kind})"
                channel.exchange_declare(exchange=name, exchange_type=kind, durable=True)
            for name in queues:
                what = f"queue {name!r}"
                channel.queue_declare(queue=name, durable=True)
            for queue, exchange, key in bindings:
                what = f"binding {queue!r} <- {exchange!r} [{key!r}]"
                channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)
        except pex.ChannelClosedByBroker as exc:
            raise NotifyError(f"declaring {what} on {redact_url(amqp_url)} failed: "
                              f"({exc.reply_code}) {exc.reply_text}") from exc
        except _DROPPED as exc:
            raise BrokerUnavailable(f"connection to {redact_url(amqp_url)} dropped declaring {what}: "
                                    f"{_describe(exc)}") from exc
    finally:
        if conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()


# --------------------------------------------------------------------------- webhook


class WebhookPublisher:
    """POSTs the replayable record as JSON; a 2xx is the only success."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._url = url
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                    follow_redirects=False)

    @property
    def destination(self) -> str:
        return redact_url(self._url)

    def __enter__(self) -> WebhookPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, message: Notification) -> None:
        headers = {"Idempotency-Key": message.id}
        if message.correlation_id:
            headers["X-Correlation-Id"] = message.correlation_id
        try:
            response = self._client.post(self._url, json=message.to_record(), headers=headers)
        except httpx.TransportError as exc:
            # httpx errors carry the request URL; do not chain them into tracebacks.
            raise WebhookUnavailable(f"cannot reach webhook {self.destination}: {_describe(exc)}") from None
        if response.is_success:
            return
        text = f"webhook {self.destination} answered {response.status_code} {response.reason_phrase}"
        snippet = response.text[:200].strip()
        if snippet:
            text += f": {snippet}"
        if response.status_code in WEBHOOK_UNAVAILABLE_STATUS:
            raise WebhookUnavailable(text)
        raise WebhookRejected(text, response.status_code)

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- outbox


def outbox_path() -> Path:
    return home_path("outbox") / OUTBOX_NAME


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def rejected_path(path: Path | None = None) -> Path:
    return _sidecar(Path(path) if path else outbox_path(), ".rejected")


@contextlib.contextmanager
def _flock(lock_path: Path, *, blocking: bool = True) -> Iterator[None]:
    """An exclusive lock on a file that is never renamed, so it outlives outbox rewrites."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            raise OutboxBusy(f"{lock_path} is held by another process") from exc
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_lines(path: Path, data: bytes) -> None:
    """Append whole lines under the lock, with O_APPEND and a single write, then fsync.

    A line torn by a crash has no newline; we end it first so the new line
    stays parseable instead of being glued onto the fragment.
    """
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a regular file takes it in one write(); loop only on a short write
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


def _encode_line(message: Notification) -> bytes:
    # ASCII-only JSON: no raw U+2028 or similar that line-oriented tools split on.
    return (json.dumps(message.to_record(), separators=(",", ":")) + "\n").encode("ascii")


def append_outbox(message: Notification, path: Path | None = None) -> Path:
    """Keep a message for later replay; safe against concurrent writers in other processes."""
    path = Path(path) if path else outbox_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _encode_line(message)
    with _flock(_sidecar(path, ".lock")):
        _append_lines(path, line)
    return path


def pending(path: Path | None = None) -> list[Notification]:
    """The messages waiting in the outbox, oldest first (unparseable lines skipped)."""
    path = Path(path) if path else outbox_path()
    if not path.exists():
        return []
    with _flock(_sidecar(path, ".lock")):
        data = path.read_bytes()
    out = []
    for raw in data.split(b"\n"):
        with contextlib.suppress(ValueError, TypeError):
            if raw.strip():
                out.append(Notification.from_record(json.loads(raw)))
    return out


def _rewrite(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def replay_outbox(publisher: Sink, path: Path | None = None) -> ReplayResult:
    """Deliver the outbox in order; remove a line only once its publish was confirmed.

    Stops at the first failure so nothing overtakes an older message; that line
    and all after it stay. The publish loop runs without the append lock (only
    one replay at a time, guarded by a second lock), so flows can keep appending;
    their lines lie past the snapshot and survive the rewrite untouched.
    """
    path = Path(path) if path else outbox_path()
    if not path.exists():
        return ReplayResult(0, 0)
    append_lock = _sidecar(path, ".lock")
    with _flock(_sidecar(path, ".replay.lock"), blocking=False):
        with _flock(append_lock):
            snapshot = path.read_bytes()
        lines = snapshot.split(b"\n")
        fragment = lines.pop()  # b"" unless the last line was torn by a crash
        done: set[int] = set()
        rejected: list[bytes] = [fragment] if fragment else []
        delivered_ids: set[str] = set()
        delivered = 0
        error: str | None = None
        try:
            for i, raw in enumerate(lines):
                if not raw.strip():
                    done.add(i)
                    continue
                try:
                    message = Notification.from_record(json.loads(raw))
                except (ValueError, TypeError) as exc:
                    log.warning("outbox %s line %d is not a notification (%s); moved to %s",
                                path, i + 1, exc, rejected_path(path))
                    rejected.append(raw)
                    done.add(i)
                    continue
                try:
                    publisher.publish(message)
                except NotifyError as exc:
                    error = f"message {message.id} (line {i + 1}): {exc}"
                    log.warning("outbox replay stopped: %s", error)
                    break
                done.add(i)
                delivered += 1
                delivered_ids.add(message.id)
        finally:
            remaining = _remove_done(path, append_lock, snapshot, lines, done, rejected, delivered_ids)
    return ReplayResult(delivered, remaining, len(rejected), error)


def _remove_done(path: Path, append_lock: Path, snapshot: bytes, lines: list[bytes], done: set[int],
                 rejected: list[bytes], delivered_ids: set[str]) -> int:
    """Rewrite the outbox without the delivered and rejected lines; return how many remain."""
    with _flock(append_lock):
        if rejected:
            _append_lines(rejected_path(path), b"".join(r + b"\n" for r in rejected))
        current = path.read_bytes()
        if current.startswith(snapshot):
            kept = [raw for i, raw in enumerate(lines) if i not in done]
            tail = current[len(snapshot):].lstrip(b"\n")
            new = b"".join(k + b"\n" for k in kept) + tail
        else:  # edited by hand during the replay: fall back to removing by id
            log.warning("outbox %s changed under the replay; removing delivered lines by id", path)
            new = b"".join(raw + b"\n" for raw in current.split(b"\n")
                           if raw.strip() and _record_id(raw) not in delivered_ids)
        if new != current:
            _rewrite(path, new)
    return sum(1 for raw in new.split(b"\n") if raw.strip())


def _record_id(raw: bytes) -> str | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record.get("id") if isinstance(record, dict) else None


# --------------------------------------------------------------------------- entry point


class Notifier:
    """The flows' one entry point: broker, else webhook, else outbox; one connection for many messages.

    Once a transport is unavailable the rest of this notifier's messages go
    straight to the outbox, so a run's messages stay in order and a dead broker
    costs one connection timeout, not one per message.
    """

    def __init__(self, config: TransportConfig, *, outbox: Path | None = None) -> None:
        self.config = config
        self._outbox = outbox
        self._sink: Publisher | WebhookPublisher | None = None
        self._down: str | None = None
        if config.amqp_url:
            self._sink = Publisher(config.amqp_url, connect_timeout=config.connect_timeout,
                                   mandatory=config.mandatory)
        elif config.webhook_url:
            self._sink = WebhookPublisher(config.webhook_url, timeout=config.webhook_timeout)

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, message: Notification) -> Delivery:
        sink = self._sink
        if sink is None:
            return Delivery("outbox", message.id, str(append_outbox(message, self._outbox)),
                            reason="no broker or webhook configured")
        if self._down is None:
            try:
                sink.publish(message)
                transport = "amqp" if isinstance(sink, Publisher) else "webhook"
                log.debug("notification %s delivered via %s to %s", message.id, transport, sink.destination)
                return Delivery(transport, message.id, sink.destination)
            except TransportUnavailable as exc:
                if not self.config.fallback_to_outbox:
                    raise
                self._down = str(exc)
        path = append_outbox(message, self._outbox)
        log.warning("notification %s (%s %s) kept in outbox %s: %s", message.id, message.exchange,
                    message.routing_key, path, self._down)
        return Delivery("outbox", message.id, str(path), reason=self._down)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


def notify(message: Notification, transport_config: TransportConfig, *, outbox: Path | None = None) -> Delivery:
    """Deliver one message with a connection of its own (see ``Notifier`` to reuse one)."""
    with Notifier(transport_config, outbox=outbox) as notifier:
        return notifier.notify(message)
