"""The `distill` command line: cache, train, calibrate, inspect, gc, serve, demo.

Heavy imports (torch, transformers, Prefect) happen inside the commands that need them, so
`distill inspect` works from the base install.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Offline teacher caches and label-free ensemble distillation.")
console = Console()
err_console = Console(stderr=True)
_verbose = False  # set by _quiet_libraries: -v adds the traceback to user errors


def _quiet_libraries(verbose: bool) -> None:
    """Prefect and transformers are chatty by default; keep the progress display readable."""
    global _verbose
    _verbose = verbose
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' save/load bars
    # Prefect's embedded server gives up after 20 s, which a loaded 2-core machine can exceed.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose else "warning")
    if not verbose:
        # A failing flow or task run logs its traceback; the command prints the error itself
        # as one line (with -v the traceback stays, and the Prefect UI keeps it either way).
        for logger in ("FLOW_RUNS", "TASK_RUNS"):
            os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_PREFECT_{logger}_LEVEL", "CRITICAL")


def _fail(message: str) -> None:
    if _verbose and traceback.format_exc() != "NoneType: None\n":
        err_console.print(traceback.format_exc(), highlight=False, soft_wrap=True)
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _checked(config: Path, teachers: list[str] | None = None, method: str | None = None,
             training: bool = False, **runner):
    """The config, loaded and with its inputs checked (pipeline/preflight.py) before any flow
    or Prefect server starts; a mistake ends here, in well under a second (the method check of
    `training` imports torch), with one line and exit status 2."""
    from distill.pipeline.config import ConfigError, load_config, with_runner
    from distill.pipeline.preflight import check_inputs, check_method

    try:
        loaded = with_runner(load_config(config), **runner)
        check_inputs(loaded, teachers)
        if training and not loaded.tasks:
            check_method(loaded, method)
    except ConfigError as e:
        _fail(str(e))
    return loaded


def _denied(location: str, error: PermissionError) -> None:
    """Object stores answer wrong or missing credentials with PermissionError (s3fs: Forbidden,
    with no errno); the operating system's own carries an errno and the local file it refused."""
    if isinstance(error.errno, int) and error.filename:
        _fail(f"{error.filename}: permission denied ({error.strerror}); check that this user "
              f"(uid {os.getuid()}) may read and write it (owner and mode of the file and its folder)")
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
    loaded = _checked(config, teacher, kind=runner, address=address,
                      devices=devices.split(",") if devices else None)
    if task and not loaded.tasks:
        _fail(f"{config}: --task needs a config with `tasks`")
    from distill.flows.server import api_server, start_api_server
    from distill.pipeline.caches import cached_summaries

    server = start_api_server()  # it starts while the check below runs, and the imports
    try:
        # Nothing to compute: answered from the cache's files, without Prefect or a model (the
        # embedded server, the only place a flow run would be recorded, dies with the command).
        summaries = None if server is None else cached_summaries(loaded, teacher, verify)
        if summaries is None:
            with api_server(preload=CACHE_PRELOAD, started=server):
                summaries = _cache(loaded, task, teacher, parallel, verify)
    except Exception as e:
        _cache_failed(loaded.cache, e)
    finally:
        if server is not None:
            server.stop()
    from distill.flows.tables import print_cache_summary

    print_cache_summary(summaries, loaded.cache, console)


# What `distill cache` imports while its Prefect server starts (flows/server.py): its flows and
# the model code a teacher loads with (transformers' modeling_utils is most of a model's load).
CACHE_PRELOAD = ("distill.flows.caching", "distill.flows.progress", "transformers.modeling_utils")


def _cache(loaded, task: list[str] | None, teacher: list[str] | None, parallel: int | None,
           verify: bool) -> list[dict]:
    from distill.flows.caching import cache_tasks, cache_teachers
    from distill.flows.progress import RichReporter, reporting
    from distill.flows.runners import cluster_scope

    with reporting(RichReporter(console)), cluster_scope():
        if loaded.tasks:
            return cache_tasks(loaded, tasks=task, teachers=teacher, max_parallel=parallel, verify=verify)
        return cache_teachers(loaded, teachers=teacher, max_parallel=parallel, verify=verify)


def _cache_failed(location: str, error: Exception) -> None:
    """One line and exit 2 for what the user can fix; anything else is a bug: re-raised."""
    from distill.pipeline.caching import NonFiniteOutput
    from distill.pipeline.config import ConfigError
    from distill.storage.fs import StoreUnavailable, is_transient
    from distill.storage.records import CacheError

    if isinstance(error, (ConfigError, CacheError, NonFiniteOutput, ValueError, StoreUnavailable)):
        _fail(str(error))
    if isinstance(error, PermissionError):
        _denied(location, error)
    if not is_transient(error):  # else the store failing outside a shard's retries (listing, manifest)
        raise error
    _fail(str(StoreUnavailable.of(location, "the store keeps failing", error)))


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
    loaded = _checked(config, method=method, training=True)
    from distill.flows.progress import RichReporter, reporting
    from distill.flows.server import api_server
    from distill.flows.tables import print_continual_summary, print_train_summary
    from distill.pipeline.config import ConfigError
    from distill.storage.records import CacheError

    try:
        loaded = _with_output(loaded, output)
        # Under `accelerate launch` / torchrun every rank runs the loop itself; Prefect would
        # start one embedded server per rank, so the flow wrapper is skipped.
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if loaded.tasks:
            if distributed:
                from distill.pipeline.continual.trainer import train_continual

                summary = train_continual(loaded, mode=mode, resume=resume)
            else:
                from distill.flows.training import train_continual_student

                with api_server(), reporting(RichReporter(console)):
                    summary = train_continual_student(loaded, mode=mode, resume=resume)
            print_continual_summary(summary, console)
            return
        if distributed:
            from distill.pipeline.trainer import train as run_training

            summary = run_training(loaded, method=method, resume=resume)
        else:
            from distill.flows.training import train_student

            with api_server(), reporting(RichReporter(console)):
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
    from distill.flows.server import api_server
    from distill.flows.tables import print_calibration
    from distill.pipeline.calibration import check_calibratable
    from distill.pipeline.config import ConfigError, load_config, write_calibration
    from distill.storage.records import CacheError

    try:
        loaded = load_config(config)
        check_calibratable(loaded)
        with api_server(), reporting(RichReporter(console)):
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
            plots: Optional[Path] = typer.Option(None, help="write the PNG plots into this folder"),
            html: Optional[Path] = typer.Option(None, help="write one self-contained HTML report"),
            labels: Optional[str] = typer.Option(None, help="a labelled .jsonl/.csv/.tsv/.parquet "
                                                 "file: per-teacher accuracy and reliability"),
            label_column: str = typer.Option("label", help="the gold label column of --labels"),
            text_column: str = typer.Option("text", help="the text column of --labels"),
            pair_column: Optional[str] = typer.Option(None, help="pair corpora: the second text "
                                                      "column of --labels"),
            group_column: Optional[str] = typer.Option(None, help="with --pair-column: the query "
                                                       "group column of --labels; single-score "
                                                       "teachers are then scored as rankers "
                                                       "(MRR@10, NDCG@10, Recall@k)"),
            examples: int = typer.Option(10, help="most disagreed-on texts to show"),
            sql: Optional[str] = typer.Option(None, help="run this SQL (DuckDB) over the cache "
                                              "instead; views: texts and one per teacher"),
            config: Optional[Path] = typer.Option(None, help="a config of this cache: its teachers' "
                                                  "caches are the current ones (default: the "
                                                  "newest complete cache of each name)"),
            as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """What is in a cache: coverage, confidence, labels, agreement, disagreement, plots, SQL.

    Every shard it reads is checked against its recorded sha256: "complete" means verified."""
    from distill.flows.tables import print_report
    from distill.inspection.report import inspect_cache
    from distill.storage.cache import Cache
    from distill.storage.labelled import read_labelled
    from distill.storage.records import CacheError

    _check_writable(plots, "--plots")
    _check_writable(html.parent if html else None, "--html")
    location = Cache(cache)
    try:
        if not location.fs.exists(location.root):
            _fail(f"{cache} does not exist")
        used = _used_by(config, location) if config else None
        if sql is not None:
            _print_sql(location, sql, teacher, used, as_json)
            return
        gold, groups = (read_labelled(labels, label_column, text_column, pair_column, group_column)
                        if labels else (None, None))
        report = inspect_cache(location, teacher, labels=gold, examples=examples, used=used,
                               groups=groups)
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


def _check_writable(folder: Path | None, option: str) -> None:
    """`folder` (made later if missing) can take files: fail now rather than after the report."""
    if folder is None:
        return
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        _fail(f"{option}: cannot write into {folder} ({existing} is not a writable folder); "
              "choose another path")


def _used_by(config: Path, cache) -> set[str]:
    """The ids `config`'s teachers have over the plans in `cache` (from files and settings:
    no model is loaded, no corpus read), refusing a config of another cache, whose ids would
    silently match nothing here."""
    from distill.pipeline.config import ConfigError, load_config
    from distill.pipeline.gc import cache_root, config_teacher_ids

    try:
        loaded = load_config(config)
        if cache_root(loaded.cache) != cache_root(cache.location):
            raise ConfigError(f"{config}: its cache is {loaded.cache}, not {cache.location}; give "
                              "a config of the cache you inspect")
        return config_teacher_ids(loaded, cache.plan_ids())
    except ConfigError as e:
        _fail(str(e))
    except ImportError as e:  # a hub model id needs huggingface_hub, which the base install lacks
        _fail(f"{config}: cannot find its teachers' files ({e}); pip install 'distill[ml]', or "
              "leave out --config to take the newest complete cache of each teacher")


def _print_sql(cache, query: str, teachers: list[str] | None, used: set[str] | None,
               as_json: bool) -> None:
    from distill.flows.tables import print_rows
    from distill.inspection.sql import SqlError, run_sql
    from distill.storage.records import CacheError

    try:
        result = run_sql(cache, query, teachers, used)
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
def gc(configs: list[Path] = typer.Argument(..., help="the YAML configs whose caches to keep"),
       dry_run: bool = typer.Option(False, "--dry-run", help="list what would go; remove nothing"),
       verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Remove the teacher caches and corpus plans that none of the given configs use (stale
    weights, settings or corpus versions), printing each and the bytes freed."""
    _quiet_libraries(verbose)
    from functools import reduce
    from operator import or_

    from distill.flows.tables import print_removed
    from distill.pipeline.config import ConfigError, load_config
    from distill.pipeline.gc import remove, same_cache, unused_caches, used_caches
    from distill.storage.records import CacheError

    try:
        loaded = [load_config(c) for c in configs]
        root = same_cache(loaded)
        unused = unused_caches(root, reduce(or_, map(used_caches, loaded)))
        if not dry_run:
            remove(root, unused)
    except (ConfigError, CacheError) as e:
        _fail(str(e))
    except PermissionError as e:
        _denied(loaded[0].cache, e)
    print_removed(unused, root.location, dry_run, console)


@app.command()
def serve(config: Path = typer.Argument(..., help="the YAML config, with a `schedule` section"),
          limit: Optional[int] = typer.Option(None, help="flow runs executed at once (default: no limit)"),
          worker: str = typer.Option(socket.gethostname(), help="this worker's name, unique among the "
                                     "workers of the config; a restart under the same name marks the "
                                     "runs it left behind as crashed"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Register and serve the config's deployments until stopped: caching on the config's cron
    schedule, training triggered as soon as every teacher's cache is complete.

    Needs a Prefect server (`prefect server start`, then PREFECT_API_URL); the embedded one
    lives only as long as this process. Any number of workers may serve one config."""
    _quiet_libraries(verbose)
    loaded = _checked(config.resolve())
    import asyncio

    from distill.flows import serve as serving
    from distill.flows.server import api_server
    from distill.pipeline.config import ConfigError

    try:
        made = serving.deployments(loaded)
        with serving.worker_lock(loaded, worker), api_server():
            asyncio.run(serving.serve(made, worker, limit))
    except ConfigError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        pass


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
