"""The Python API: what a notebook user needs, in one place, without the command line.

```python
import distill

config = distill.load_config("distill.yaml")   # validated; ConfigError names file and key
distill.cache(config)                           # run every teacher once (missing shards only)
report = distill.train(config, method="govern") # train a student; the report as a dict
table = distill.teacher_table(config, "a")      # a teacher's cache beside its texts (pyarrow)
ds = distill.teacher_dataset(config, "a")       # the same as a `datasets.Dataset`
summary = distill.inspect("./cache")            # the `distill inspect --json` report
```

Caching and training run the same Prefect flows as the command line (in Prefect's embedded mode
when no server is configured). Reading a cache and inspecting it need only the base install.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

    from distill.pipeline.config import DistillConfig


def load_config(path: str | os.PathLike) -> "DistillConfig":
    """The validated config at `path` (relative paths in it resolve from its folder)."""
    from distill.pipeline.config import load_config as load

    return load(path)


def _config(config: "str | os.PathLike | DistillConfig") -> "DistillConfig":
    from distill.pipeline.config import DistillConfig

    return config if isinstance(config, DistillConfig) else load_config(config)


def cache(config: "str | os.PathLike | DistillConfig", teachers: list[str] | None = None) -> list[dict]:
    """Cache the config's teachers (or those named) over its corpus; one summary per teacher
    (rows, shards computed and recomputed, teacher id, plan id)."""
    from distill.flows.caching import cache_tasks, cache_teachers

    loaded = _config(config)
    if loaded.tasks:
        return cache_tasks(loaded)
    return cache_teachers(loaded, teachers=teachers)


def train(config: "str | os.PathLike | DistillConfig", method: str | None = None,
          resume: bool = False) -> dict:
    """Train a student from the complete caches (into train.output/METHOD); the report."""
    from distill.flows.training import train_continual_student, train_student

    loaded = _config(config)
    if loaded.tasks:
        return train_continual_student(loaded)
    return train_student(loaded, method=method, resume=resume)


def teacher_table(source: "str | os.PathLike | DistillConfig", teacher: str) -> "pa.Table":
    """One teacher's whole cache as a pyarrow Table, row for row beside the corpus text:
    `sample_id, row, text` and the teacher's payload columns, in plan order.

    `source` is a config (the cache its teachers wrote with their current weights over its
    corpus as it is now: exactly what `distill train` would use) or a cache location (then
    `teacher` is a name with one complete cache there, or a teacher id). Every shard is
    verified as it is read; local shards are memory-mapped, so nothing is copied."""
    import pyarrow as pa

    aligned = _aligned(source, teacher)
    parts = []
    for index in range(len(aligned)):
        shard = aligned.read(index)
        payload = shard.teachers[0].drop_columns(["sample_id"])
        parts.append(pa.Table.from_arrays(
            [*shard.text.columns, *payload.columns], names=[*shard.text.column_names, *payload.column_names]))
    return pa.concat_tables(parts)


def teacher_dataset(source: "str | os.PathLike | DistillConfig", teacher: str) -> "datasets.Dataset":
    """`teacher_table` as a Hugging Face `datasets.Dataset` (over the same Arrow memory)."""
    import datasets

    return datasets.Dataset(teacher_table(source, teacher))


def inspect(location: str | os.PathLike, teachers: list[str] | None = None) -> dict:
    """The report of `distill inspect --json` for the cache at `location`."""
    from distill.inspection.report import inspect_cache
    from distill.storage.cache import Cache

    return inspect_cache(Cache(location), teachers)


def _aligned(source, teacher: str):
    from distill.pipeline.config import DistillConfig
    from distill.storage.aligned import AlignedCache
    from distill.storage.cache import Cache
    from distill.storage.records import CacheError

    if isinstance(source, DistillConfig) or str(source).endswith((".yaml", ".yml")):
        from distill.pipeline.caches import open_caches

        config = _config(source)
        names = [t.name for t in config.teachers]
        if teacher not in names:
            raise CacheError(f"{config.source}: no teacher named {teacher!r} (teachers: "
                             f"{', '.join(names)})")
        every = open_caches(config)
        chosen = every.manifests[names.index(teacher)]
        return AlignedCache(every.cache, [chosen.teacher_id], plan_ids={every.plan.plan_id})
    return AlignedCache(Cache(source), [teacher])
