"""One Prefect Block type per external system; deployments name their documents."""
import tasks  # noqa: F401  (pins PREFECT_HOME under INGEST_HOME before Prefect loads)
