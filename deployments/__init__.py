"""The queue→run bridge and helpers for prefect.yaml."""
import tasks  # noqa: F401
