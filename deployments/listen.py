"""The queue → run bridge: one long-running consumer per queue, one flow run per message.

A message is acked only once its flow run exists (what ``run_deployment`` with
``timeout=0`` does, with an idempotency key derived from the message), so a crash of
the listener loses nothing: RabbitMQ redelivers, and the same key returns the
same run instead of a second one. Bad messages are acked and answered on the
domain's error channel. When the Prefect API is unreachable the message is
nacked with requeue after a growing pause.

Resends are attempts, not duplicates (tasks/run_attempts): a message whose run is still
live joins it; one whose run Completed is answered again (EGA: ``files.completed``) without
new work; one whose run Failed, Crashed or was Cancelled starts the next attempt. Every
message gets one log line: its message id (or correlation id) → flow run name and id. The run is
created under the name its flow gives it (``ega-<stable id>``, ``fits-<file>``…: the flow's
``flow_run_name`` applied to the message's parameters), so the UI shows it from Scheduled on and the
log line names the run an operator will find.

Concurrency: pika's blocking consumer runs in the main thread; run creation
runs on an asyncio loop in a second thread with a bounded number in flight, and
acks are handed back to the pika thread with ``add_callback_threadsafe``.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pika

from deployments.adapters import Adapter
from tasks.errors import UserError
from tasks.notify import connection_parameters, quiet_pika, redact_url

log = logging.getLogger("archive-ingest.listen")

EVENT_NAME = "ingest.message.accepted"


@dataclass
class ListenerStats:
    accepted: int = 0
    rejected: int = 0
    requeued: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)


class Listener:
    def __init__(self, amqp_url: str, queue: str, deployment: str, adapter: Adapter, *,
                 concurrency: int = 16, max_backoff: float = 30.0, emit_events: bool = True,
                 declare_queue: bool = True) -> None:
        self.amqp_url = amqp_url
        self.queue = queue
        self.deployment = deployment
        self.adapter = adapter
        self.concurrency = concurrency
        self.max_backoff = max_backoff
        self.emit_events = emit_events
        self.declare_queue = declare_queue
        self.stats = ListenerStats()
        self._stopping = threading.Event()
        self._failures = 0  # consecutive API failures, for the backoff
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="listen-runs", daemon=True)
        self._client: Any = None
        self._deployment_id: Any = None
        self._flow: Any = None  # the deployment's flow, for its run names
        self._sem: asyncio.Semaphore | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    # ------------------------------------------------------------ lifecycle
    def run(self) -> ListenerStats:
        quiet_pika()
        _own_log_handler()
        self._loop_thread.start()
        asyncio.run_coroutine_threadsafe(self._open_client(), self._loop).result(timeout=60)
        self._connection = pika.BlockingConnection(connection_parameters(self.amqp_url))
        self._channel = self._connection.channel()
        if self.declare_queue:
            self._channel.queue_declare(self.queue, durable=True)
        self._channel.basic_qos(prefetch_count=self.concurrency * 2)
        self._channel.basic_consume(self.queue, self._on_message)
        log.info("listening on %s queue %r → deployment %r (concurrency %d)",
                 redact_url(self.amqp_url), self.queue, self.deployment, self.concurrency)
        try:
            while not self._stopping.is_set():
                self._connection.process_data_events(time_limit=0.5)
            self._drain()
        finally:
            self._close()
        return self.stats

    def stop(self, *_: Any) -> None:
        """Graceful: stop taking messages, finish the runs in flight, ack them, close."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _drain(self) -> None:
        assert self._channel is not None and self._connection is not None
        try:
            self._channel.stop_consuming()
        except Exception:  # noqa: BLE001 - already closing
            pass
        deadline = time.monotonic() + 120
        while self.stats.in_flight and time.monotonic() < deadline:
            self._connection.process_data_events(time_limit=0.2)

    def _close(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()  # unacked messages return to the queue
        finally:
            fut = asyncio.run_coroutine_threadsafe(self._close_client(), self._loop)
            try:
                fut.result(timeout=10)
            except Exception:  # noqa: BLE001
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            log.info("listener stopped: %s", self.stats)

    async def _open_client(self) -> None:
        from prefect.client.orchestration import get_client

        self._client = get_client()
        await self._client.__aenter__()
        self._sem = asyncio.Semaphore(self.concurrency)
        # Resolved once: run_deployment reads the deployment again on every call, which
        # halves how many runs a second one listener can create.
        deployment = await self._client.read_deployment_by_name(self.deployment)
        self._deployment_id = deployment.id
        self._flow = deployment_flow(deployment.entrypoint)

    async def _close_client(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)

    # ------------------------------------------------------------ messages
    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        correlation_id = getattr(properties, "correlation_id", None)
        message_id = getattr(properties, "message_id", None)
        label = (f"message {message_id}" if message_id else
                 f"correlation {correlation_id}" if correlation_id else f"delivery {tag}")
        try:
            accepted = self.adapter.accept(body, correlation_id)
        except UserError as exc:
            self._reject(channel, tag, body, correlation_id, exc.message, label)
            return
        self.stats.in_flight += 1
        future = asyncio.run_coroutine_threadsafe(self._create_run(accepted, correlation_id, label), self._loop)
        future.add_done_callback(lambda f: self._connection.add_callback_threadsafe(
            lambda: self._settle(channel, tag, f)))

    def _reject(self, channel: Any, tag: int, body: bytes, correlation_id: str | None, reason: str,
                label: str = "") -> None:
        try:
            self.adapter.reject(body, correlation_id, reason)
        except Exception as exc:  # noqa: BLE001 - cannot answer now: keep the message, try later
            log.warning("could not route rejected message (%s); requeueing", exc)
            channel.basic_nack(tag, requeue=True)
            self.stats.requeued += 1
            return
        channel.basic_ack(tag)
        self.stats.rejected += 1
        log.info("%s → no flow run: rejected: %s", label or "message", reason)

    async def _create_run(self, accepted: Any, correlation_id: str | None = None, label: str = "message") -> str:
        from tasks.run_attempts import submit_attempt

        assert self._sem is not None
        async with self._sem:
            try:
                # What run_deployment(..., timeout=0, idempotency_key=k) does, minus the lookup, per
                # attempt: the same key returns the existing run instead of creating a second one.
                sub = await submit_attempt(self._client, self._deployment_id, accepted.parameters,
                                           accepted.idempotency_key,
                                           name=final_run_name(self._flow, accepted.parameters))
                answered = None
                if sub.outcome == "completed":  # before the ack: a failed answer requeues the message
                    answered = await asyncio.to_thread(self.adapter.answer_completed, accepted, correlation_id)
            except Exception:
                self._failures += 1
                await asyncio.sleep(min(self.max_backoff, 0.5 * 2 ** min(self._failures, 8)))
                raise
            self._failures = 0
        what = {"created": "new flow run", "joined": "joined flow run",
                "completed": "already completed flow run"}[sub.outcome]
        log.info("%s → %s %s (%s), attempt %d%s", label, what, sub.flow_run.name, sub.flow_run_id, sub.attempt,
                 f"; answered {answered} again" if answered else "")
        if self.emit_events and sub.outcome == "created":
            self._emit(accepted, sub.flow_run_id, sub.idempotency_key)
        return sub.flow_run_id

    def _emit(self, accepted: Any, flow_run_id: str, idempotency_key: str) -> None:
        """Observability only: fire-and-forget, never the reason a message is acked."""
        try:
            from prefect.events import emit_event

            emit_event(event=EVENT_NAME, resource={"prefect.resource.id": f"ingest.queue.{self.queue}"},
                       related=[{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                                 "prefect.resource.role": "flow-run"}],
                       payload={**accepted.payload, "flow_run_id": flow_run_id,
                                "idempotency_key": idempotency_key})
        except Exception as exc:  # noqa: BLE001
            log.debug("event not emitted: %s", exc)

    def _settle(self, channel: Any, tag: int, future: Any) -> None:
        self.stats.in_flight -= 1
        exc = future.exception()
        if exc is None:
            channel.basic_ack(tag)
            self.stats.accepted += 1
            return
        log.warning("flow run not created (%s: %s); message requeued", type(exc).__name__, exc)
        channel.basic_nack(tag, requeue=True)
        self.stats.requeued += 1


def deployment_flow(entrypoint: str | None) -> Any:
    """The flow object behind ``path/to/module.py:function``, imported as its package module (not
    re-executed as a script, as Prefect's loader would). None when it cannot be imported here: the
    run is then created under Prefect's name and takes the flow's own when it starts."""
    if not entrypoint or ":" not in entrypoint:
        return None
    path, attribute = entrypoint.rsplit(":", 1)
    module = path.removesuffix(".py").replace("/", ".").replace("\\", ".").lstrip(".")
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as exc:  # noqa: BLE001 - a name is never worth refusing messages over
        log.warning("flow %s not importable here (%s); runs get their names when they start", entrypoint, exc)
        return None


def final_run_name(flow: Any, parameters: dict[str, Any]) -> str | None:
    """The name the flow gives its run when it starts, computed now from the same parameters.

    A ``flow_run_name`` template is formatted with them; a callable (flows/outcome ``parameter``)
    reads them from the flow-run context, which is all a context holding just the parameters needs
    to provide. None when the flow names no runs, or its naming needs more than the parameters."""
    naming = getattr(flow, "flow_run_name", None)
    if not naming:
        return None
    try:
        if isinstance(naming, str):
            return naming.format(**parameters)
        from prefect.context import FlowRunContext

        with FlowRunContext.model_construct(parameters=parameters):
            name = naming()
        return name if isinstance(name, str) and name else None
    except Exception as exc:  # noqa: BLE001 - the flow names the run itself when it starts
        log.debug("run name not computed ahead: %s", exc)
        return None


def _own_log_handler() -> None:
    """One line per message is the listener's contract with operators, whatever Prefect's logging
    config did to the root logger (PREFECT_LOGGING_LEVEL=WARNING would silence it)."""
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def build_adapter(kind: str, *, config_block: str = "default", parameter: str | None = None) -> Adapter:
    from blocks.broker import BrokerBlock
    from blocks.register import load_block
    from deployments.adapters import EgaAdapter, JsonAdapter

    broker = load_block(BrokerBlock, config_block)
    if kind == "ega" and broker.protocol == "sda":
        from deployments.sda_adapter import SdaAdapter

        return SdaAdapter(broker.transport(), broker.sda_exchange)
    if kind == "ega":
        return EgaAdapter(broker.transport(), broker.status_exchange)
    return JsonAdapter(broker.transport(), parameter=parameter)
