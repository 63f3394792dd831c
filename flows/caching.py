"""Prefect flows that fill the teacher cache: `cache-teacher` and `cache-teachers`.

One task per shard, retried on transient errors, never run for a shard already published
(and verified). Teacher inference is I/O-light and compute-heavy, so shard tasks of one teacher
share one loaded model; teachers run side by side up to a concurrency limit. A finished teacher
cache is published as Prefect artifacts (flows/artifacts.py).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import publish_cache
from flows.handoff import announce_if_complete, announce_teacher
from flows.progress import reporter
from pipeline.caching import NonFiniteOutput, TeacherCache, release_runner, teacher_cache
from pipeline.calibration import eval_corpus_config, held_out_teachers
from pipeline.config import ConfigError, DistillConfig, load_config
from pipeline.corpus import plan_corpus
from storage.cache import Cache
from storage.records import CacheError, Plan

PERMANENT_ERRORS = (ConfigError, CacheError, NonFiniteOutput, ValueError, OSError)


def _retry_transient(task, task_run, state) -> bool:
    """Retry a shard unless the error will not go away by itself (bad config, NaN model)."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:
        return True
    return False


@task(name="plan-corpus", cache_policy=NO_CACHE)
def plan_task(config: DistillConfig) -> Plan:
    report = reporter()
    report.start("plan", "plan corpus", total=None)
    plan = plan_corpus(Cache(config.cache), config.corpus, progress=lambda n: report.advance("plan", n))
    get_run_logger().info("plan %s: %d rows in %d shards (%d rows skipped)", plan.plan_id,
                          plan.rows, len(plan.shards), plan.skipped.total)
    return plan


@task(name="cache-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1,
      retry_condition_fn=_retry_transient, task_run_name="{teacher.config.name}-shard-{index}")
def shard_task(teacher: TeacherCache, index: int) -> int:
    report = reporter()
    entry = teacher.compute(index, on_rows=lambda n: report.advance(teacher.config.name, n))
    return entry.rows


def _load(config: str | DistillConfig) -> DistillConfig:
    return config if isinstance(config, DistillConfig) else load_config(config)


@flow(name="cache-teacher", task_runner=ThreadPoolTaskRunner(max_workers=2))
def cache_teacher(config: str | DistillConfig, teacher: str, plan: Plan | None = None,
                  verify: bool = True) -> dict:
    """Cache one teacher over the corpus plan; only missing or damaged shards are computed."""
    config = _load(config)
    log = get_run_logger()
    plan = plan or plan_task(config)
    cached = teacher_cache(Cache(config.cache), plan, config.teacher(teacher), config.source)
    cached.start()
    todo, problems = cached.pending(verify=verify)
    for problem in problems:
        log.warning("recomputing: %s", problem)
    rows = sum(plan.shards[i].rows for i in todo)
    reporter().start(teacher, f"teacher {teacher}", total=rows)
    futures = [shard_task.submit(cached, i) for i in todo]
    for future in futures:
        future.wait()
    release_runner(cached.teacher_id)
    failed = [f for f in futures if f.state.is_failed()]
    if failed:
        failed[0].result()  # re-raise the first failure after every other shard has landed
    manifest = cached.finalize()
    publish_cache(cached.cache, manifest, computed=len(todo), recomputed=len(problems))
    summary = {"teacher": teacher, "teacher_id": cached.teacher_id, "plan_id": plan.plan_id,
               "rows": sum(s.rows for s in manifest.shards), "shards": len(manifest.shards),
               "computed": len(todo), "recomputed": len(problems), "bytes": sum(s.bytes for s in manifest.shards)}
    log.info("teacher %s: %s", teacher, summary)
    announce_teacher(config, summary)
    return summary


@task(name="cache-teacher-run", cache_policy=NO_CACHE)
def _teacher_task(config: DistillConfig, teacher: str, plan: Plan, verify: bool) -> dict:
    return cache_teacher(config, teacher, plan=plan, verify=verify)


@flow(name="cache-teachers")
def cache_teachers(config: str | DistillConfig, teachers: list[str] | None = None,
                   max_parallel: int = 1, verify: bool = True, announce: bool = True) -> list[dict]:
    """Cache every teacher of a config (or the named ones), `max_parallel` at a time; causal-LM
    teachers (and prompt-based ones, for a continual config: `held_out_teachers`) also over the
    config's `eval` text, when it has one. With `announce`, a run that completes the config's
    caches tells the triggered training deployments (flows/handoff.py)."""
    config = _load(config)
    if config.corpus is None:
        raise ConfigError(f"{config.source}: this config has tasks, each with its own corpus; cache "
                          f"one with `distill cache {config.source} --task NAME`")
    names = teachers or [t.name for t in config.teachers]
    for name in names:
        config.teacher(name)  # fail before any work on an unknown name
    plan = plan_task(config)
    with ThreadPoolTaskRunner(max_workers=max_parallel) as runner:
        futures = [runner.submit(_teacher_task, {"config": config, "teacher": n, "plan": plan,
                                                 "verify": verify}) for n in names]
        summaries = [f.result() for f in futures]
    evaluated = held_out_teachers(config, names) if config.eval else []
    if evaluated:
        # Causal-LM students and students that map teacher prompts are evaluated from the
        # teachers' cache of the held-out text; caching it now keeps teachers out of training
        # like everything else they contribute.
        held_out = eval_corpus_config(config).model_copy(update={"eval": None})
        summaries += cache_teachers(held_out, teachers=evaluated, max_parallel=max_parallel,
                                    verify=verify, announce=False)
    if announce:
        announce_if_complete(config, wrote=any(s["computed"] for s in summaries))
    return summaries


@flow(name="cache-task")
def cache_task(config: str | DistillConfig, task: str, teachers: list[str] | None = None,
               max_parallel: int = 1, verify: bool = True) -> list[dict]:
    """Cache the teachers over one task's corpus slice: the single run a schedule makes when a
    task arrives. The slice gets its own plan, hence its own teacher ids and shard files, so the
    caches of earlier tasks are never opened for writing. Announces (flows/handoff.py) once every
    task of the config is complete."""
    config = _load(config)
    return cache_teachers(config.for_task(task), teachers=teachers, max_parallel=max_parallel,
                          verify=verify)


@flow(name="cache-tasks")
def cache_tasks(config: str | DistillConfig, tasks: list[str] | None = None,
                teachers: list[str] | None = None, max_parallel: int = 1,
                verify: bool = True) -> list[dict]:
    """Cache every task of a tasks config (or the named ones) in order. Tasks already cached cost
    only a check, so a schedule running this on a config file that grows picks up each new task
    when it appears."""
    config = _load(config)
    names = [config.task(n).name for n in tasks or [t.name for t in config.tasks or []]]
    return [s for n in names for s in cache_task(config, n, teachers=teachers,
                                                  max_parallel=max_parallel, verify=verify)]
