"""``python flows/run.py nrao`` (the Ingest Envoy's command line) and ``nrao-broker setup``."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from flows.cli_common import add_concurrency, emit, local_run, run_batch

EXIT_COMPLETED, EXIT_USER_ERROR, EXIT_SYSTEM_ERROR = 0, 1, 2
log = logging.getLogger("archive-ingest.nrao")


def run_request(raw: dict[str, Any], *, config_block: str = "default",
                ngas_url: str | None = None) -> tuple[int, dict[str, Any]]:
    """Run one ingest in-process; (exit code, the summary the CLI prints)."""
    from pydantic import ValidationError

    from flows.nrao.flow import failure_summary, ingest_nrao_product
    from flows.nrao.steps import NraoRequest
    from tasks.errors import is_user_error

    try:
        request = NraoRequest.model_validate(raw)
    except ValidationError as exc:
        return EXIT_USER_ERROR, {"kind": raw.get("kind"), "source": raw.get("source"), "state": "ERROR",
                                 "error": "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                    for e in exc.errors())}
    try:
        with local_run():
            summary = ingest_nrao_product(request, config_block=config_block, ngas_url=ngas_url)
        return EXIT_COMPLETED, summary
    except Exception as exc:
        return (EXIT_USER_ERROR if is_user_error(exc) else EXIT_SYSTEM_ERROR), failure_summary(request, exc)


def request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The envoy's options → one request. --observation DIR SDM; --seci SOURCE CALIBRATION_LOCATOR."""
    raw: dict[str, Any] = {"reingest": args.reingest, "dry_run": args.dry_run, "telescope": args.telescope,
                           "input_locator": args.input_locator, "product_name": args.product_name,
                           "correlation_id": args.correlation_id}
    if args.calibration:
        raw.update(kind="calibration", source=args.calibration)
    elif args.image:
        raw.update(kind="image", source=args.image)
    elif args.observation:
        directory, sdm = args.observation
        raw.update(kind="observation", source=f"{directory.rstrip('/')}/{sdm}" if directory not in ("", ".") else sdm)
    else:
        source, locator = args.seci
        if args.input_locator and args.input_locator != locator:
            raise SystemExit("--seci already names the calibration locator; drop --input-locator")
        raw.update(kind="seci", source=source, input_locator=locator)
    return raw


def run_request_file(path: str, *, config_block: str = "default",
                     ngas_url: str | None = None) -> tuple[int, dict[str, Any]]:
    """One request file ({kind, source, ...}, the fields of the command line) through ``run_request``."""
    import json
    from pathlib import Path

    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError("a request is a JSON object")
    except (OSError, ValueError) as exc:
        return EXIT_USER_ERROR, {"request": path, "kind": None, "source": None, "state": "ERROR",
                                 "error": f"cannot read request {path}: {exc}"}
    code, summary = run_request(raw, config_block=config_block, ngas_url=ngas_url)
    return code, {"request": path, **summary}


def _nrao(args: argparse.Namespace) -> int:
    _console_logging()
    if args.request:
        return run_batch(args.request, lambda r: run_request_file(r, config_block=args.config,
                                                                  ngas_url=args.ngas_url),
                         concurrency=args.concurrency, describe=lambda r: {"request": r, "state": "ERROR"})
    code, summary = run_request(request_from_args(args), config_block=args.config, ngas_url=args.ngas_url)
    if code == EXIT_COMPLETED and summary["state"] == "DRY_RUN":
        log.info("dry run of %s %s: staged in %s, manifest %s", summary["kind"], summary["source"],
                 summary.get("staging_dir"), summary.get("manifest"))
        for row in summary.get("plan", []):
            log.info("  would archive %-60s as %s (%d bytes, %s)", row["name"], row["ngas_file_id"], row["size"],
                     row["mime_type"])
    elif code == EXIT_COMPLETED:
        log.info("ingest of %s %s succeeded: %s", summary["kind"], summary["source"],
                 ", ".join(p["locator"] for p in summary.get("products", [])))
        for f in summary.get("files", []):
            log.info("  NGAS %s version %d (%d bytes, %s)", f["ngas_file_id"], f["version"], f["size"], f["checksum"])
    else:
        log.error("ingest of %s %s failed (%s): %s", summary.get("kind"), summary.get("source"), summary["state"],
                  summary.get("error"))
    emit(summary)
    return code


def _console_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s nrao: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _broker(args: argparse.Namespace) -> int:
    from blocks.ngas import NgasBlock
    from blocks.register import load_block
    from flows.cli_common import NO_BROKER, amqp_url_or_none
    from flows.nrao.steps import setup_topology

    amqp_url = amqp_url_or_none(args.amqp_url, args.config)
    if not amqp_url:
        print(NO_BROKER, file=sys.stderr)
        return 2
    emit(setup_topology(amqp_url, load_block(NgasBlock, args.config).status_exchange))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nrao", help="ingest an NRAO calibration, image, observation or VLASS SECI product into NGAS",
        description="Stage the product, write ingestion-manifest.json and the ingestion artifacts tar, archive "
                    "every file to NGAS (CRC checked) and record it in the registry. Sources are relative to the "
                    "NGAS block's source_root (or absolute paths beneath it). Prints one JSON line; exit 0 "
                    "completed (or dry run), 1 user error, 2 system error.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--calibration", metavar="SOURCE", help="a CASA calibration run directory")
    what.add_argument("--image", metavar="SOURCE", help="a CASA imaging run directory")
    what.add_argument("--observation", nargs=2, metavar=("DIR", "SDM"),
                      help="the SDM (execution block) named SDM in directory DIR")
    what.add_argument("--seci", nargs=2, metavar=("SOURCE", "CAL_LOCATOR"),
                      help="a VLASS SECI run directory and the locator of its input calibration")
    what.add_argument("--request", nargs="+", metavar="FILE",
                      help="JSON request file(s) {kind, source, reingest?, dry_run?, input_locator?, ...}; "
                           "each product gets its own flow run and result line")
    add_concurrency(p)
    p.add_argument("--reingest", action="store_true", help="archive new NGAS versions of a recorded product")
    p.add_argument("--dry-run", action="store_true", help="stage and write the manifest only; print the plan")
    p.add_argument("--input-locator", help="input product locator (calibration: its EB; image: its calibration); "
                                           "default: from the run's metadata.json / aux_image_metadata.json")
    p.add_argument("--product-name", help="calibration tar name (default: the run directory's name)")
    p.add_argument("--telescope", default="EVLA", choices=["EVLA", "VLBA", "GBT", "ALMA"])
    p.add_argument("--correlation-id", help="carried on the status message")
    p.add_argument("--config", default="default", help="block document name for ngas/registry/broker")
    p.add_argument("--ngas-url", help="override the NGAS block's URL for this run")
    p.set_defaults(handler=_nrao)

    b = sub.add_parser("nrao-broker", help="declare the NRAO status exchange and queue (nrao.ingest.#)")
    b.add_argument("action", choices=["setup"])
    b.add_argument("--amqp-url", help="broker URL (default: the broker block)")
    b.add_argument("--config", default="default")
    b.set_defaults(handler=_broker)
