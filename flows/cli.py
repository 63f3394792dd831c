"""The `distill` command line: cache, train, calibrate, inspect, demo.

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
from rich.markup import escape

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
    # Prefect's embedded server gives up after 20 s, which a loaded 2-core machine can exceed.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose else "warning")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _denied(location: str, error: PermissionError) -> None:
    """Object stores answer wrong or missing credentials with PermissionError (s3fs: Forbidden)."""
    _fail(f"{location}: access denied ({error}); check the credentials the store expects "
          "(for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL or a profile)")


@app.command()
def cache(config: Path = typer.Argument(..., help="the YAML config"),
          teacher: Optional[list[str]] = typer.Option(None, "--teacher", "-t",
                                                       help="only this teacher (repeatable)"),
          task: Optional[list[str]] = typer.Option(None, "--task",
                                                    help="with `tasks`: only this task (repeatable); "
                                                         "default all, in order"),
          parallel: Optional[int] = typer.Option(None, min=1, help="teachers run side by side "
                                                 "(default 1, or one per --devices entry)"),
          runner: Optional[str] = typer.Option(None, help="where shard tasks run: threads, ray "
                                               "or dask (overrides runner.kind)"),
          address: Optional[str] = typer.Option(None, help="an existing Ray/Dask cluster "
                                                "(overrides runner.address); none starts a local one"),
          devices: Optional[str] = typer.Option(None, help="comma-separated, e.g. cuda:0,cuda:1: "
                                                "one teacher per device at a time (overrides "
                                                "runner.devices)"),
          verify: bool = typer.Option(True, help="check published shards' checksums first"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run each teacher once over the corpus and write its Arrow cache (missing shards only).

    With `tasks` (continual distillation) each task's corpus slice is cached on its own, so a
    schedule can run `distill cache CONFIG --task NAME` when the task arrives."""
    _quiet_libraries(verbose)
    from distill.flows.caching import cache_tasks, cache_teachers
    from distill.flows.progress import RichReporter, reporting
    from distill.flows.runners import cluster_scope
    from distill.flows.tables import print_cache_summary
    from distill.pipeline.caching import NonFiniteOutput
    from distill.pipeline.config import ConfigError, load_config, with_runner
    from distill.storage.records import CacheError

    try:
        loaded = with_runner(load_config(config), kind=runner, address=address,
                             devices=devices.split(",") if devices else None)
        if task and not loaded.tasks:
            raise ConfigError(f"{config}: --task needs a config with `tasks`")
        with reporting(RichReporter(console)), cluster_scope():
            if loaded.tasks:
                summaries = cache_tasks(loaded, tasks=task, teachers=teacher, max_parallel=parallel,
                                        verify=verify)
            else:
                summaries = cache_teachers(loaded, teachers=teacher, max_parallel=parallel, verify=verify)
    except (ConfigError, CacheError, NonFiniteOutput) as e:
        _fail(str(e))
    except PermissionError as e:
        _denied(loaded.cache, e)
    print_cache_summary(summaries, loaded.cache, console)


@app.command()
def train(config: Path = typer.Argument(..., help="the YAML config"),
          method: Optional[str] = typer.Option(None, "--method", "-m", help="overrides train.method"),
          mode: Optional[str] = typer.Option(None, help="with `tasks`: overrides continual.mode "
                                                        "(prompts, finetune, joint)"),
          resume: bool = typer.Option(False, help="continue from the latest checkpoint (made "
                                      "with the same settings)"),
          output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                help="overrides train.output (the run folder: "
                                                     "one sub-folder per method)"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Train the student from the teacher caches (label-free ensemble distillation) into
    OUTPUT/METHOD; with `tasks`, learn them in order (continual distillation) and print the
    task accuracy matrix."""
    _quiet_libraries(verbose)
    from distill.flows.progress import RichReporter, reporting
    from distill.flows.tables import print_continual_summary, print_train_summary
    from distill.pipeline.config import ConfigError, load_config
    from distill.storage.records import CacheError

    try:
        loaded = _with_output(load_config(config), output)
        if loaded.tasks:
            from distill.flows.training import train_continual_student

            with reporting(RichReporter(console)):
                summary = train_continual_student(loaded, mode=mode)
            print_continual_summary(summary, console)
            return
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Under `accelerate launch` / torchrun every rank runs the loop itself; Prefect
            # would start one embedded server per rank, so the flow wrapper is skipped.
            from distill.pipeline.trainer import train as run_training

            summary = run_training(loaded, method=method, resume=resume)
        else:
            from distill.flows.training import train_student

            with reporting(RichReporter(console)):
                summary = train_student(loaded, method=method, resume=resume)
    except (ConfigError, CacheError, ValueError) as e:
        _fail(str(e))
    except PermissionError as e:
        _denied(loaded.cache, e)
    print_train_summary(summary, console)
    if "student" in summary:
        console.print(f"student written to {summary['student']} (report: "
                      f"{Path(summary['output']) / 'report.md'})", highlight=False, soft_wrap=True)
    else:
        console.print(f"not finished: the checkpoints are in {Path(summary['output']) / 'checkpoints'}; "
                      "continue with --resume", highlight=False, soft_wrap=True)


def _with_output(config, output: Path | None):
    """`--output`: the run folder instead of the config's train.output (relative paths from the
    current directory, as for any command-line path)."""
    if output is None:
        return config
    from distill.pipeline.config import TrainConfig

    train = (config.train or TrainConfig()).model_copy(update={"output": str(output.resolve())})
    return config.model_copy(update={"train": train})


@app.command()
def calibrate(config: Path = typer.Argument(..., help="the YAML config; its `eval` file is the held-out set"),
              write: bool = typer.Option(False, "--write",
                                         help="store the fits as teachers[].calibration in CONFIG"),
              verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Fit each teacher's calibration (temperature, or Platt for scores) on the labelled eval set."""
    _quiet_libraries(verbose)
    from distill.flows.calibration import calibrate as calibrate_flow
    from distill.flows.progress import RichReporter, reporting
    from distill.flows.tables import print_calibration
    from distill.pipeline.config import ConfigError, load_config, write_calibration
    from distill.storage.records import CacheError

    try:
        loaded = load_config(config)
        with reporting(RichReporter(console)):
            fits = calibrate_flow(loaded)
    except (ConfigError, CacheError) as e:
        _fail(str(e))
    print_calibration(fits, console)
    if write:
        write_calibration(config, {f["teacher"]: (f["scale"], f["bias"]) for f in fits})
        console.print(f"wrote teachers[].calibration to {config} (YAML comments are not kept)")
    else:
        console.print("not written; re-run with --write to store these in the config")


@app.command()
def inspect(cache: str = typer.Argument(..., help="cache location: a path or fsspec URL"),
            teacher: Optional[list[str]] = typer.Option(None, "--teacher", "-t",
                                                         help="only this teacher (repeatable)"),
            verify: bool = typer.Option(False, help="also check every shard's checksum"),
            plots: Optional[Path] = typer.Option(None, help="write the PNG plots into this folder"),
            html: Optional[Path] = typer.Option(None, help="write one self-contained HTML report"),
            labels: Optional[str] = typer.Option(None, help="a labelled .jsonl/.csv/.tsv/.parquet "
                                                 "file: per-teacher accuracy and reliability"),
            label_column: str = typer.Option("label", help="the gold label column of --labels"),
            text_column: str = typer.Option("text", help="the text column of --labels"),
            examples: int = typer.Option(10, help="most disagreed-on texts to show"),
            sql: Optional[str] = typer.Option(None, help="run this SQL (DuckDB) over the cache "
                                              "instead; views: texts and one per teacher"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """What is in a cache: coverage, confidence, labels, agreement, disagreement, plots, SQL."""
    from distill.flows.tables import print_report
    from distill.storage.cache import Cache
    from distill.storage.inspect import inspect_cache
    from distill.storage.labelled import read_labels
    from distill.storage.records import CacheError

    location = Cache(cache)
    try:
        if not location.fs.exists(location.root):
            _fail(f"{cache} does not exist")
        if sql is not None:
            _print_sql(location, sql, teacher, as_json)
            return
        gold = read_labels(labels, label_column, text_column) if labels else None
        report = inspect_cache(location, teacher, verify=verify, labels=gold, examples=examples)
    except CacheError as e:
        _fail(str(e))
    except PermissionError as e:
        _denied(cache, e)
    if plots or html:
        _write_plots(report, plots, html)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print_report(report, console)


def _print_sql(cache, query: str, teachers: list[str] | None, as_json: bool) -> None:
    from distill.flows.tables import print_rows
    from distill.inspection.sql import SqlError, run_sql
    from distill.storage.records import CacheError

    try:
        result = run_sql(cache, query, teachers)
    except (SqlError, CacheError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(result.to_pylist(), indent=2, default=_json_value))
    else:
        print_rows(result, console)


def _json_value(value):
    """SQL results hold more than JSON's types: decimals (DuckDB's sums) become numbers, the
    rest (dates, bytes, ...) text."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _write_plots(report: dict, folder: Path | None, html_file: Path | None) -> None:
    from distill.inspection.html import render_html
    from distill.inspection.plots import render_plots

    pngs = render_plots(report)
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
        for name, png in pngs.items():
            (folder / name).write_bytes(png)
        err_console.print(f"wrote {len(pngs)} plots to {folder}")
    if html_file:
        html_file.parent.mkdir(parents=True, exist_ok=True)
        html_file.write_text(render_html(report, pngs), encoding="utf-8")
        err_console.print(f"wrote {html_file}")


@app.command()
def serve(config: Path = typer.Argument(..., help="the YAML config, with a `schedule` section"),
          limit: Optional[int] = typer.Option(None, help="flow runs executed at once (default: no limit)"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Register and serve the config's deployments until stopped: caching on the config's cron
    schedule, training triggered as soon as every teacher's cache is complete.

    Needs a Prefect server (`prefect server start`, then PREFECT_API_URL); the embedded one
    lives only as long as this process."""
    _quiet_libraries(verbose)
    from prefect import serve as serve_deployments

    from distill.flows.serve import deployments
    from distill.pipeline.config import ConfigError, load_config

    try:
        made = deployments(load_config(config.resolve()))
    except ConfigError as e:
        _fail(str(e))
    serve_deployments(*made, limit=limit)


@app.command()
def demo(workdir: Path = typer.Option(Path("distill-demo"), help="where teachers, caches and students go"),
         method: Optional[list[str]] = typer.Option(None, "--method", "-m",
                                                     help="only these methods (repeatable)"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """The whole pipeline on the embedded WordNet-12 sample with real MiniLM teachers."""
    _quiet_libraries(verbose)
    from distill.flows.demo import METHODS, run_demo

    unknown = sorted(set(method or []) - set(METHODS))
    if unknown:
        _fail(f"unknown demo method(s) {unknown}; choose from {', '.join(METHODS)}")
    run_demo(workdir, console, method)


if __name__ == "__main__":
    app()
