"""Prefect flows, one package per archive domain; ``flows/run.py`` is the local CLI."""
import tasks  # noqa: F401  (pins PREFECT_HOME under INGEST_HOME before Prefect loads)
