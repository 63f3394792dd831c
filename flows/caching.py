"""Prefect flows that fill the teacher cache: `cache-teacher` and `cache-teachers`.

One task per shard, retried on transient errors, never run for a shard already published
(and verified). Shard tasks run where `runner` says (flows/runners.py): on threads of this
process, sharing one loaded model per teacher, or on the workers of a Ray or Dask cluster,
each loading the teacher once. Teachers run side by side up to a concurrency limit, or one per
device with `runner.devices` (flows/devices.py). A finished teacher cache is published as
Prefect artifacts (flows/artifacts.py).
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from distill.flows.artifacts import publish_cache
from distill.flows.devices import DevicePool, pinned
from distill.flows.handoff import announce_if_complete, announce_teacher
from distill.flows.progress import reporter
from distill.flows.runners import check_installed, cluster_scope, shard_runner
from distill.flows.server import exit_with_parent
from distill.pipeline.caching import NonFiniteOutput, TeacherCache, release_inference, teacher_cache
from distill.pipeline.calibration import held_out_teachers
from distill.pipeline.config import ConfigError, DistillConfig, eval_corpus_config, load_config
from distill.pipeline.corpus import plan_corpus
from distill.storage.cache import Cache
from distill.storage.fs import StoreUnavailable, is_transient
from distill.storage.records import CacheError, Plan

PERMANENT_ERRORS = (ConfigError, CacheError, NonFiniteOutput, ValueError, OSError)


# Seconds between a shard's tries: a restarting object store answers 500 for about 30 s.
RETRY_DELAYS = [1, 4, 10, 20, 30]
OTHER_RETRIES = 2  # for errors neither known to pass (storage/fs.py) nor known not to


def _retry_transient(task, task_run, state) -> bool:
    """Retry a shard through a store's 5xx, throttling, resets and timeouts (storage/fs.py);
    never when the error will not go away by itself (bad config, NaN model, a full disk); an
    error of neither kind a little, so that a bug does not wait out the store's backoff."""
    try:
        state.result()
    except Exception as e:
        if is_transient(e):
            return True
        return not isinstance(e, PERMANENT_ERRORS) and task_run.run_count <= OTHER_RETRIES
    return False


def _through_transient_errors(call):
    """`call()`, retried with the shards' backoff while the store fails transiently: a store
    restarted as the last shard lands must not fail the manifest after every shard made it."""
    for delay in RETRY_DELAYS:
        try:
            return call()
        except Exception as e:
            if not is_transient(e):
                raise
            get_run_logger().warning("store unavailable (%s); retrying in %d s", e, delay)
            time.sleep(delay)
    return call()


@task(name="plan-corpus", cache_policy=NO_CACHE)
def plan_task(config: DistillConfig) -> Plan:
    report = reporter()
    report.start("plan", "plan corpus", total=None)
    plan = plan_corpus(Cache(config.cache), config.corpus, progress=lambda n: report.advance("plan", n))
    get_run_logger().info("plan %s: %d rows in %d shards (%d rows skipped)", plan.plan_id,
                          plan.rows, len(plan.shards), plan.skipped.total)
    return plan


@task(name="cache-shard", cache_policy=NO_CACHE, retries=len(RETRY_DELAYS),
      retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_retry_transient,
      task_run_name="{teacher.config.name}-shard-{index}")
def shard_task(teacher: TeacherCache, index: int) -> int:
    report = reporter()
    try:
        entry = teacher.compute(index, on_rows=lambda n: report.advance(teacher.config.name, n))
    except Exception as e:
        if not is_transient(e):
            raise
        # Its own type and message, since the cause does not survive the trip back from a
        # Ray/Dask worker, and the command's one line must name the store and the shard.
        raise StoreUnavailable.of(teacher.cache.location, f"shard {index} of teacher "
                                  f"{teacher.config.name} could not be written", e) from e
    return entry.rows


def _load(config: str | DistillConfig) -> DistillConfig:
    return config if isinstance(config, DistillConfig) else load_config(config)


@flow(name="cache-teacher")
def cache_teacher(config: str | DistillConfig, teacher: str, plan: Plan | None = None,
                  verify: bool = True) -> dict:
    """Cache one teacher over the corpus plan; only missing or damaged shards are computed."""
    config = _load(config)
    check_installed(config.runner, config.source)
    log = get_run_logger()
    plan = plan or plan_task(config)
    cached = teacher_cache(Cache(config.cache), plan, config.teacher(teacher), config.source)
    cached.start()
    todo, problems = cached.pending(verify=verify)
    for problem in problems:
        log.warning("recomputing: %s", problem)
    missing = len(todo)
    todo = cached.reuse(todo)
    report = reporter()
    report.start(teacher, f"teacher {teacher}", total=sum(plan.shards[i].rows for i in todo))
    futures = []
    if todo:
        with shard_runner(config.runner, config.source) as runner:
            futures = [runner.submit(shard_task, {"teacher": cached, "index": i}) for i in todo]
            for future in as_completed(futures):
                future.wait()
                if config.runner.kind != "threads" and future.state.is_completed():
                    report.advance(teacher, future.result())  # workers' progress stays with them
    release_inference(cached.teacher_id)
    failed = [f for f in futures if f.state.is_failed()]
    if failed:
        failed[0].result()  # re-raise the first failure after every other shard has landed
    manifest = _through_transient_errors(cached.finalize)
    publish_cache(cached.cache, manifest, computed=len(todo), recomputed=len(problems))
    summary = {"teacher": teacher, "teacher_id": cached.teacher_id, "plan_id": plan.plan_id,
               "rows": sum(s.rows for s in manifest.shards), "shards": len(manifest.shards),
               "computed": len(todo), "recomputed": len(problems), "reused": missing - len(todo),
               "bytes": sum(s.bytes for s in manifest.shards)}
    log.info("teacher %s: %s", teacher, summary)
    announce_teacher(config, summary)
    return summary


@task(name="cache-teacher-run", cache_policy=NO_CACHE)
def _teacher_task(config: DistillConfig, teacher: str, plan: Plan, verify: bool,
                  devices: DevicePool | None) -> dict:
    if devices is None:
        return cache_teacher(config, teacher, plan=plan, verify=verify)
    with devices.lease() as device:
        get_run_logger().info("teacher %s runs on %s", teacher, device)
        return cache_teacher(pinned(config, teacher, device), teacher, plan=plan, verify=verify)


def _side_by_side(config: DistillConfig, max_parallel: int | None) -> int:
    """Teachers run at once: `max_parallel`, or one per device, never more than devices."""
    devices = config.runner.devices
    if devices and max_parallel and max_parallel > len(devices):
        raise ConfigError(f"{config.source}: {max_parallel} teachers side by side on "
                          f"{len(devices)} devices ({', '.join(devices)}); a device runs one "
                          "teacher at a time: drop --parallel or list more devices")
    return max_parallel or (len(devices) if devices else 1)


@flow(name="cache-teachers", on_running=[exit_with_parent])
def cache_teachers(config: str | DistillConfig, teachers: list[str] | None = None,
                   max_parallel: int | None = None, verify: bool = True,
                   announce: bool = True) -> list[dict]:
    """Cache every teacher of a config (or the named ones), `max_parallel` at a time (default
    1, or one per device of `runner.devices`), and also over the config's `eval` text when it
    has one (for a continual config only causal-LM and prompt-based teachers: `held_out_teachers`).
    With `announce`, a run that completes the config's caches tells the triggered training
    deployments (flows/handoff.py)."""
    config = _load(config)
    if config.corpus is None:
        raise ConfigError(f"{config.source}: this config has tasks, each with its own corpus; cache "
                          f"one with `distill cache {config.source} --task NAME`")
    names = teachers or [t.name for t in config.teachers]
    for name in names:
        config.teacher(name)  # fail before any work on an unknown name
    check_installed(config.runner, config.source)
    lanes = _side_by_side(config, max_parallel)
    plan = plan_task(config)
    devices = DevicePool(config.runner.devices) if config.runner.devices else None
    with cluster_scope():  # a local Ray/Dask cluster serves every teacher, eval text included
        with ThreadPoolTaskRunner(max_workers=lanes) as runner:
            futures = [runner.submit(_teacher_task, {"config": config, "teacher": n, "plan": plan,
                                                     "verify": verify, "devices": devices})
                       for n in names]
            summaries = [f.result() for f in futures]
        evaluated = held_out_teachers(config, names) if config.eval else []
        if evaluated:
            # Students are evaluated (and compared with their teachers) from the teachers' cache
            # of the held-out text; caching it now keeps teachers out of training like
            # everything else they contribute.
            summaries += cache_teachers(eval_corpus_config(config), teachers=evaluated,
                                        max_parallel=max_parallel, verify=verify, announce=False)
    if announce:
        announce_if_complete(config, wrote=any(s["computed"] for s in summaries))
    return summaries


@flow(name="cache-task")
def cache_task(config: str | DistillConfig, task: str, teachers: list[str] | None = None,
               max_parallel: int | None = None, verify: bool = True) -> list[dict]:
    """Cache the teachers over one task's corpus slice: the single run a schedule makes when a
    task arrives. The slice gets its own plan, hence its own teacher ids and shard files, so the
    caches of earlier tasks are never opened for writing. Announces (flows/handoff.py) once every
    task of the config is complete."""
    config = _load(config)
    return cache_teachers(config.for_task(task), teachers=teachers, max_parallel=max_parallel,
                          verify=verify)


@flow(name="cache-tasks", on_running=[exit_with_parent])
def cache_tasks(config: str | DistillConfig, tasks: list[str] | None = None,
                teachers: list[str] | None = None, max_parallel: int | None = None,
                verify: bool = True) -> list[dict]:
    """Cache every task of a tasks config (or the named ones) in order. Tasks already cached cost
    only a check, so a schedule running this on a config file that grows picks up each new task
    when it appears."""
    config = _load(config)
    names = [config.task(n).name for n in tasks or [t.name for t in config.tasks or []]]
    with cluster_scope():  # one local Ray/Dask cluster for every task
        return [s for n in names for s in cache_task(config, n, teachers=teachers,
                                                      max_parallel=max_parallel, verify=verify)]
