"""Shared, domain-agnostic building blocks for every ingest flow.

Importing this package pins Prefect's home under ``INGEST_HOME`` before Prefect
itself is imported anywhere, so block documents and the ephemeral database
belong to the same home as the vault and the registry.
"""
from tasks.home import apply_home_env

apply_home_env()
