"""The complete teacher caches a config means, found from files and settings alone.

Training opens them, and so does the caching flow's hand-off (flows/handoff.py) to decide
whether a run completed them; nothing here imports torch or transformers, so a caching run does
not pay for the trainer's imports.
"""

from __future__ import annotations

from distill.pipeline.config import DistillConfig, eval_corpus_config
from distill.pipeline.corpus import corpus_plan_id
from distill.pipeline.teacher import identify
from distill.storage.aligned import AlignedCache
from distill.storage.cache import Cache
from distill.storage.records import CacheError


def open_caches(config: DistillConfig) -> AlignedCache:
    """The complete caches that the config's teachers, with their current weights and settings,
    wrote over the config's corpus AS IT IS NOW: the plan is found by the fingerprint of the
    corpus's content (one pass over its text), never by its path, so a corpus edited in place
    is a different corpus and caches of its old version are refused, not used. Teachers are
    found by the id the caching flow gives them, so a cache written with other settings under
    the same name (say, without features) is not used either."""
    cache = Cache(config.cache)
    corpus = config.corpus
    plan = corpus_plan_id(corpus)
    if cache.find_plan(plan) is None:
        raise CacheError(_no_plan_message(config, cache, plan))
    expected = [identify(t, plan, f"{config.source}: teachers[{t.name}]").teacher_id
                for t in config.teachers]
    missing = [t.name for t, i in zip(config.teachers, expected) if cache.find_manifest(i) is None]
    if missing:
        raise CacheError(f"{config.source}: no cache of teacher(s) {', '.join(missing)} with the "
                         f"config's current weights and settings over corpus {corpus.path} (plan "
                         f"{plan}); run `distill cache {config.source}` first")
    return AlignedCache(cache, expected, plan_ids={plan})


def _no_plan_message(config: DistillConfig, cache: Cache, current: str) -> str:
    """Why there is no cache of this corpus: never cached, or cached before it changed."""
    corpus = config.corpus
    stale = sorted(AlignedCache.plans_for(cache, corpus.path, corpus.rows_per_shard))
    if stale:
        folders = ", ".join(f"corpora/{p}" for p in stale)
        return (f"{config.source}: corpus {corpus.path} changed since it was cached: the cache "
                f"holds {folders} (stale) but its current content is plan {current}, which was "
                f"never cached; run `distill cache {config.source}` (and `distill gc` to remove "
                "the stale caches)")
    return (f"{config.source}: no cache of corpus {corpus.path} (rows_per_shard "
            f"{corpus.rows_per_shard}) in {cache.location}; run `distill cache {config.source}` first")


def open_eval_caches(config: DistillConfig) -> AlignedCache:
    """The teachers' complete caches over the `eval` file, which `distill cache` writes with the
    corpus's: refused when missing (say, `eval` was added after caching), before any training,
    rather than reporting the student without its teachers."""
    try:
        return open_caches(eval_corpus_config(config))
    except CacheError as e:
        reason = str(e).removeprefix(f"{config.source}: ")
        raise CacheError(f"{config.source}: the report compares the student with its teachers on "
                         f"the eval file, which needs their caches of it: {reason}") from e


def cached_summaries(config: DistillConfig, teachers: list[str] | None = None,
                     verify: bool = True) -> list[dict] | None:
    """What a caching run of these teachers (default all) would report when it has nothing to
    compute: every shard published and passing its check (sha256 with `verify`), one summary
    per teacher as `cache-teachers` returns them. None as soon as anything is left to do, or
    for what only the flow handles (tasks, an eval file), so that the caller runs the flow.
    Reads files and settings only: no model, no Prefect."""
    if config.tasks or config.eval or config.corpus is None:
        return None
    try:
        return _complete_summaries(config, Cache(config.cache), teachers, verify)
    except CacheError:  # a damaged record: the flow rewrites it
        return None


def _complete_summaries(config: DistillConfig, cache: Cache, teachers: list[str] | None,
                        verify: bool) -> list[dict] | None:
    plan = cache.find_plan(corpus_plan_id(config.corpus))
    folder = cache.plan_dir(plan.plan_id) if plan is not None else None
    if plan is None or any(cache.file_problem(folder, e, verify) for e in plan.shards):
        return None  # no plan yet, or a text shard to rewrite
    summaries = []
    for name in teachers or [t.name for t in config.teachers]:
        teacher_id = identify(config.teacher(name), plan.plan_id,
                              f"{config.source}: teachers[{name}]").teacher_id
        manifest = cache.find_manifest(teacher_id)
        broken: list[str] = []
        entries = cache.published_shards(teacher_id, broken)
        if (manifest is None or broken or len(manifest.shards) != len(plan.shards)
                or sorted(entries) != list(range(len(plan.shards)))
                or any(cache.shard_problem(teacher_id, e, verify) for e in entries.values())):
            return None
        summaries.append({"teacher": name, "teacher_id": teacher_id, "plan_id": plan.plan_id,
                          "rows": sum(s.rows for s in manifest.shards), "shards": len(manifest.shards),
                          "computed": 0, "recomputed": 0, "reused": 0,
                          "bytes": sum(s.bytes for s in manifest.shards)})
    return summaries
