"""Which caches configs use, and removing the ones none of them use (`distill gc`).

A config uses one plan per corpus it reads (its corpus, or each task's, and its `eval` file)
and, over each, the cache of each of its teachers with their current weights and settings. Both
ids are computed the way caching computes them (`corpus_plan_id`, `identify`), from the corpus
text and the teachers' files, so re-cached teachers and edited corpora leave stale caches that
are recognised as such. Nothing here loads a model or imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.pipeline.config import ConfigError, DistillConfig, eval_corpus_config
from distill.pipeline.corpus import corpus_plan_id
from distill.pipeline.teacher import identify
from distill.storage.cache import Cache
from distill.storage.fs import join


@dataclass(frozen=True)
class UsedCaches:
    plan_ids: frozenset[str]
    teacher_ids: frozenset[str]

    def __or__(self, other: UsedCaches) -> UsedCaches:
        return UsedCaches(self.plan_ids | other.plan_ids, self.teacher_ids | other.teacher_ids)


@dataclass(frozen=True)
class Unused:
    """A teacher cache or a plan that no given config uses."""

    kind: str    # "teacher" or "plan"
    id: str
    what: str    # the teacher's name, or the plan's corpus
    path: str
    marker: str  # the file that makes the folder a cache (removed first)
    bytes: int


def used_caches(config: DistillConfig) -> UsedCaches:
    """The plans and teacher caches that caching, training and calibrating `config` read (one
    pass over each of its corpora: which plan a corpus has depends on its text)."""
    plans, teachers = set(), set()
    for corpus in _corpora(config):
        plan_id = corpus_plan_id(corpus.corpus)
        plans.add(plan_id)
        teachers |= _teacher_ids(corpus, plan_id)
    return UsedCaches(frozenset(plans), frozenset(teachers))


def config_teacher_ids(config: DistillConfig, plan_ids: list[str]) -> set[str]:
    """The ids the config's teachers, with their current files and settings, have over any of
    `plan_ids`: which caches are this config's, without reading its corpora (and so without
    `datasets`), for `distill inspect --config`."""
    return {i for corpus in _corpora(config) for p in plan_ids for i in _teacher_ids(corpus, p)}


def _corpora(config: DistillConfig) -> list[DistillConfig]:
    """One config per corpus `config` reads: its corpus or each task's, and its `eval` file."""
    corpora = [config.for_task(t.name) for t in config.tasks] if config.tasks else [config]
    return corpora + ([eval_corpus_config(config)] if config.eval else [])


def _teacher_ids(corpus: DistillConfig, plan_id: str) -> set[str]:
    return {identify(t, plan_id, f"{corpus.source}: teachers[{t.name}].model").teacher_id
            for t in corpus.teachers}


def cache_root(location: str) -> tuple[type, str]:
    """What makes two cache locations the same cache: filesystem and root path."""
    cache = Cache(location)
    return type(cache.fs), cache.root


def same_cache(configs: list[DistillConfig]) -> Cache:
    """The one cache root the configs share; different roots are refused, since what one config
    does not use in its root says nothing about another root."""
    if len({cache_root(config.cache) for config in configs}) > 1:
        roots = ", ".join(f"{config.source}: {config.cache}" for config in configs)
        raise ConfigError(f"the configs name different cache roots ({roots}); give configs of "
                          "one cache root (run `distill gc` once per root)")
    return Cache(configs[0].cache)


def unused_caches(cache: Cache, used: UsedCaches) -> list[Unused]:
    """Finished teacher caches and plans (those with their manifest or plan.json) not in
    `used`: teachers first, so an interrupted removal never leaves a cache without its plan.
    Unfinished folders are left alone: they may belong to a caching run in progress."""
    fs = cache.fs
    out = [Unused("teacher", m.teacher_id, m.name, path := cache.teacher_dir(m.teacher_id),
                  join(path, "manifest.json"), fs.du(path, total=True))
           for m in cache.manifests() if m.teacher_id not in used.teacher_ids]
    out += [Unused("plan", p.plan_id, p.source, path := cache.plan_dir(p.plan_id),
                   join(path, "plan.json"), fs.du(path, total=True))
            for p in cache.plans() if p.plan_id not in used.plan_ids]
    # Caches of another cache format are never used: no config's ids can name them.
    others = sorted(cache.other_formats(), key=lambda o: o.kind != "teacher")
    out += [Unused(o.kind, o.id, f"cache format {o.version}", o.path,
                   join(o.path, "manifest.json" if o.kind == "teacher" else "plan.json"),
                   fs.du(o.path, total=True)) for o in others]
    return out


def remove(cache: Cache, unused: list[Unused]) -> None:
    """Delete each folder, its marker first: a removal cut short leaves files no reader lists
    as a cache, never a cache with files missing."""
    for item in unused:
        cache.fs.rm_file(item.marker)
        cache.fs.rm(item.path, recursive=True)
