"""Prefect flow `inspect-cache`: `distill inspect` as a flow run, its tables as an artifact, so
a schedule or the Prefect UI can look into a cache without a terminal."""

from __future__ import annotations

from prefect import flow

from distill.flows.artifacts import publish_report
from distill.inspection.report import inspect_cache as inspect_report
from distill.storage.cache import Cache


@flow(name="inspect-cache")
def inspect_cache(cache: str, teachers: list[str] | None = None) -> dict:
    """Inspect the cache at `cache` (path or fsspec URL) and publish the report as a markdown
    artifact; returns the report (the JSON of `distill inspect --json`)."""
    location = Cache(cache)
    report = inspect_report(location, teachers)
    publish_report(location, report)
    return report
