"""The `distill` command line: cache, inspect, demo.

Heavy imports (torch, transformers, Prefect) happen inside the commands that need them, so
`distill inspect` works from the base install.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Offline teacher caches and label-free ensemble distillation.")
console = Console()
err_console = Console(stderr=True)


def _quiet_libraries(verbose: bool) -> None:
    """Prefect and transformers are chatty by default; keep the progress display readable."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


@app.command()
def cache(config: Path = typer.Argument(..., help="the YAML config"),
          teacher: Optional[list[str]] = typer.Option(None, "--teacher", "-t",
                                                       help="only this teacher (repeatable)"),
          parallel: int = typer.Option(1, help="teachers run side by side"),
          verify: bool = typer.Option(True, help="check published shards' checksums first"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run each teacher once over the corpus and write its Arrow cache (missing shards only)."""
    _quiet_libraries(verbose)
    from flows.caching import cache_teachers
    from flows.progress import RichReporter, reporting
    from pipeline.caching import NonFiniteOutput
    from pipeline.config import ConfigError, load_config
    from storage.records import CacheError

    try:
        loaded = load_config(config)
        with reporting(RichReporter(console)):
            summaries = cache_teachers(loaded, teachers=teacher, max_parallel=parallel, verify=verify)
    except (ConfigError, CacheError, NonFiniteOutput) as e:
        _fail(str(e))
    table = Table("teacher", "teacher id", "rows", "shards", "computed", "recomputed", "MiB",
                  title=f"cache {loaded.cache}")
    for s in summaries:
        table.add_row(s["teacher"], s["teacher_id"], f"{s['rows']:,}", str(s["shards"]),
                      str(s["computed"]), str(s["recomputed"]), f"{s['bytes'] / 2**20:.2f}")
    console.print(table)


@app.command()
def inspect(cache: str = typer.Argument(..., help="cache location: a path or fsspec URL"),
            teacher: Optional[list[str]] = typer.Option(None, "--teacher", "-t"),
            verify: bool = typer.Option(False, help="also check every shard's checksum"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """What is in a cache: rows, shards, bytes, completeness, confidence, agreement."""
    from storage.cache import Cache
    from storage.inspect import inspect_cache
    from storage.records import CacheError

    location = Cache(cache)
    if not location.fs.exists(location.root):
        _fail(f"{cache} does not exist")
    try:
        report = inspect_cache(location, teacher, verify=verify)
    except CacheError as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    _print_report(report)


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def _print_report(report: dict) -> None:
    plans = Table("plan", "source", "rows", "shards", "skipped empty", "skipped non-string",
                  title=f"cache {report['cache']}")
    for p in report["plans"]:
        plans.add_row(p["plan_id"], p["source"], f"{p['rows']:,}", str(p["shards"]),
                      str(p["skipped_empty"]), str(p["skipped_non_string"]))
    console.print(plans)
    teachers = Table("teacher", "id", "plan", "rows", "shards", "MiB", "complete", "truncated",
                     "non-finite", "entropy", "margin", "MC entropy")
    for t in report["teachers"]:
        teachers.add_row(t["name"], t["teacher_id"], t["plan_id"], f"{t['rows']:,}",
                         f"{t['shards']}/{t['plan_shards']}", f"{t['bytes'] / 2**20:.2f}",
                         "yes" if t["complete"] else "[red]no[/]", str(t["truncated_rows"]),
                         str(t["nonfinite_rows"]), _fmt(t["mean_entropy"]), _fmt(t["mean_margin"]),
                         _fmt(t.get("mean_mc_entropy")))
    console.print(teachers)
    for t in report["teachers"]:
        for problem in t["problems"]:
            console.print(f"[yellow]problem[/] {t['name']}: {problem}")
    if report["agreement"]:
        agree = Table("teacher", "teacher", "rows", "argmax agreement", title="pairwise agreement")
        for a in report["agreement"]:
            agree.add_row(a["a"], a["b"], f"{a['rows']:,}", _fmt(a["agreement"]) + (
                f" ({a['note']})" if a.get("note") else ""))
        console.print(agree)


@app.command()
def demo(workdir: Path = typer.Option(Path("distill-demo"), help="where teachers and the cache go"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """The whole pipeline on the embedded WordNet-12 sample with real MiniLM teachers."""
    _quiet_libraries(verbose)
    from flows.demo import run_demo

    run_demo(workdir, console)


if __name__ == "__main__":
    app()
