"""``python flows/run.py listen``: run the queue → run bridge until SIGTERM."""
from __future__ import annotations

import argparse
import logging
import sys

from flows.cli_common import emit


def _listen(args: argparse.Namespace) -> int:
    from deployments.listen import Listener, build_adapter

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from flows.cli_common import NO_BROKER, amqp_url_or_none

    amqp_url = amqp_url_or_none(args.amqp_url, args.config)
    if not amqp_url:
        print(NO_BROKER, file=sys.stderr)
        return 2
    kind = args.adapter or ("ega" if args.queue == "files" else "json")
    listener = Listener(amqp_url, args.queue, args.deployment, build_adapter(kind, config_block=args.config,
                                                                              parameter=args.parameter),
                        concurrency=args.concurrency, emit_events=not args.no_events)
    listener.install_signal_handlers()
    stats = listener.run()
    emit({"accepted": stats.accepted, "rejected": stats.rejected, "requeued": stats.requeued})
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from deployments.ops import deploy

    emit(deploy(args.pool, heartbeat_seconds=args.heartbeat_seconds, max_attempts=args.max_attempts))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from deployments.worker import run_worker
    from tasks.home import ingest_home

    worker_args = ["--pool", args.pool]
    if args.limit is not None:
        worker_args += ["--limit", str(args.limit)]
    if args.name:
        worker_args += ["--name", args.name]
    return run_worker(ingest_home(), worker_args, warm=not args.cold)


def _schedule(args: argparse.Namespace) -> int:
    from deployments.ops import set_schedule

    emit(set_schedule(args.deployment, args.cron, args.timezone))
    return 0


def _server(args: argparse.Namespace) -> int:
    from deployments import localapi

    if args.action == "stop":
        emit(localapi.stop())
        return 0
    if args.action == "start":
        try:
            localapi.ensure(idle_minutes=args.idle_minutes)
        except localapi.LocalApiError as exc:
            print(f"archive-ingest: {exc}", file=sys.stderr)
            return 2
    info = localapi.status()
    if sys.stderr.isatty() and info.get("running"):
        print(f"Prefect UI: {info.get('ui', info['url'])}", file=sys.stderr)
    emit(info)
    return 0 if info.get("running") or args.action == "status" else 2


def register(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("server", help="start, stop or show this home's local Prefect API (shared by every call)",
                       description="Every call that needs Prefect starts the local API on demand and reuses it; "
                                   "it stops itself after --idle-minutes without use (default 30, or "
                                   "$INGEST_LOCAL_API_IDLE_MINUTES). Its URL, pid and log live in "
                                   "$INGEST_HOME/prefect/. With PREFECT_API_URL set, that API is used instead.")
    v.add_argument("action", choices=["start", "stop", "status"])
    v.add_argument("--idle-minutes", type=float, help="start: stop after this many idle minutes")
    v.set_defaults(handler=_server, needs_api=False)

    d = sub.add_parser("deploy", help="create the work pool and every deployment in prefect.yaml (PREFECT_API_URL)")
    d.add_argument("--pool", default="ingest", help="process work pool name")
    d.add_argument("--heartbeat-seconds", type=int, default=60, metavar="S",
                   help="flow-run heartbeat set in the pool's job template (>= 30; default 60); a run silent for "
                        "2.5 beats is marked Crashed and re-run")
    d.add_argument("--max-attempts", type=int, metavar="N",
                   help="re-runs of a crashed ingest before it is marked for review (Prefect variable "
                        "ingest_max_attempts; default 3)")
    d.set_defaults(handler=_deploy)
    w = sub.add_parser("worker", help="a Prefect process worker with a warm runner: runs start in a fork, not a "
                                      "new Python process",
                       description="Runs `prefect worker start --pool POOL` and, beside it, a warm runner that has "
                                   "imported Prefect and the flows once; the pool's flow-run command (set by deploy) "
                                   "hands each run to it. Without a runner (--cold, or while it restarts after a code "
                                   "change) runs start in their own process. SIGTERM/SIGINT stop both.")
    w.add_argument("--pool", default="ingest", help="work pool to poll (default ingest)")
    w.add_argument("--limit", type=int, help="most flow runs at once on this worker")
    w.add_argument("--name", help="worker name (default: Prefect's)")
    w.add_argument("--cold", action="store_true", help="no warm runner: every run in a process of its own")
    w.set_defaults(handler=_worker, warm_ok=False)  # a daemon: its own process, signals and all
    s = sub.add_parser("schedule", help="change a scheduled deployment's cron (kept across redeploys)")
    s.add_argument("deployment", choices=["apt-scan", "svo-sync", "ega-inbox", "fits-work-orders", "reconcile"])
    s.add_argument("--cron", required=True, help='e.g. "*/5 * * * *"')
    s.add_argument("--timezone", default="UTC")
    s.set_defaults(handler=_schedule)

    p = sub.add_parser("listen", help="consume a RabbitMQ queue and start one deployment run per message",
                       description="Acks a message only after its flow run exists; bad messages go to the error "
                                   "channel; stops gracefully on SIGTERM.")
    p.add_argument("--queue", required=True, help="queue to consume (EGA: files)")
    p.add_argument("--deployment", required=True, help="FLOW_NAME/DEPLOYMENT_NAME, e.g. ingest-ega-file/ega")
    p.add_argument("--adapter", choices=["ega", "json"], help="message mapping (default: ega for 'files')")
    p.add_argument("--parameter", help="json adapter: pass the message as this one parameter")
    p.add_argument("--amqp-url", help="broker URL (default: the broker block)")
    p.add_argument("--config", default="default", help="block document name")
    p.add_argument("--concurrency", type=int, default=16, help="flow runs created in parallel")
    p.add_argument("--no-events", action="store_true", help="do not emit ingest.message.accepted events")
    p.set_defaults(handler=_listen, warm_ok=False)  # a daemon: its own process, signals and all
