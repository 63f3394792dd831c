"""Read K teacher caches side by side with their plan's text shards.

Every teacher writes shard i over exactly the rows of plan shard i, in plan order, so joining
teachers is a zip of aligned files (no hash join: Arrow's rejects list columns, and a zip is
~6 ms per shard for 3 teachers). Alignment is verified, not trusted: the sample ids of every
teacher shard must equal the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from distill.storage.cache import Cache
from distill.storage.records import CacheError, DamagedShard, Plan, TeacherManifest


@dataclass
class AlignedShard:
    index: int
    text: pa.Table                # sample_id, row, text
    teachers: list[pa.Table]      # one per teacher, same rows in the same order


class AlignedCache:
    """The plan and the complete caches of the given teachers (by name or teacher id)."""

    def __init__(self, cache: Cache, teachers: list[str], plan_ids: set[str] | None = None):
        """`plan_ids` limits the search to caches built on those plans (one corpus).

        Opening checks that every shard is there with its recorded size; each shard's sha256
        is checked as it is read (`read`), so no byte is trusted that was not verified and no
        file is read twice."""
        self.cache = cache
        self.manifests = [self._find(cache, t, plan_ids) for t in teachers]
        plans = {m.plan_id for m in self.manifests}
        if len(plans) != 1:
            detail = ", ".join(f"{m.name}: {m.plan_id}" for m in self.manifests)
            raise CacheError(f"teacher caches were built on different corpus plans ({detail}); "
                             "cache every teacher over the same corpus and rows_per_shard")
        self.plan: Plan = cache.load_plan(plans.pop())
        for m in self.manifests:
            self._check_complete(m)

    @staticmethod
    def _find(cache: Cache, key: str, plan_ids: set[str] | None) -> TeacherManifest:
        found = [m for m in cache.manifests() if key in (m.name, m.teacher_id)
                 and (plan_ids is None or m.plan_id in plan_ids)]
        if not found:
            raise CacheError(f"no teacher cache named or with id '{key}' in {cache.location}"
                             f"{' for this corpus' if plan_ids is not None else ''}; "
                             "run `distill cache CONFIG` first")
        complete = [m for m in found if m.complete]
        if len(complete) > 1:
            ids = ", ".join(m.teacher_id for m in complete)
            raise CacheError(f"several complete caches are named '{key}' ({ids}); "
                             "name the teacher id instead")
        return (complete or found)[0]

    def _check_complete(self, m: TeacherManifest) -> None:
        if not m.complete or len(m.shards) != len(self.plan.shards):
            have = {s.index for s in self.cache.published_shards(m.teacher_id).values()}
            missing = [i for i in range(len(self.plan.shards)) if i not in have]
            raise CacheError(f"teacher cache '{m.name}' ({m.teacher_id}) is incomplete: shards "
                             f"{missing[:10]} missing; run `distill cache` to finish it")
        for entry in m.shards:
            problem = self.cache.shard_problem(m.teacher_id, entry, checksum=False)
            if problem:
                raise CacheError(f"teacher cache '{m.name}': {problem}; run `distill cache` "
                                 "to recompute it")

    def __len__(self) -> int:
        return len(self.plan.shards)

    @property
    def rows(self) -> int:
        return self.plan.rows

    @staticmethod
    def plans_for(cache: Cache, source: str, rows_per_shard: int) -> set[str]:
        """Plans built from corpus `source` with this sharding (older versions of it too)."""
        return {p for p in cache.plan_ids()
                if (plan := cache.load_plan(p)).source == source and plan.rows_per_shard == rows_per_shard}

    def shard_rows(self) -> list[int]:
        return [s.rows for s in self.plan.shards]

    def read(self, index: int, columns: list[str] | None = None) -> AlignedShard:
        text = self.cache.read_text_shard(self.plan, index)
        ids = text.column("sample_id")
        tables = []
        for m in self.manifests:
            table = self._read_teacher(m, index)
            if not table.column("sample_id").equals(ids):
                raise CacheError(f"teacher cache '{m.name}' shard {index}: sample ids differ from "
                                 f"plan {self.plan.plan_id}; recompute it with `distill cache`")
            tables.append(table.select(columns) if columns else table)
        return AlignedShard(index, text, tables)

    def _read_teacher(self, m: TeacherManifest, index: int) -> pa.Table:
        try:
            return self.cache.read_shard(m.teacher_id, m.shards[index])
        except DamagedShard as e:
            raise e.of(f"shard {index} of teacher '{m.name}' ({m.teacher_id}); nothing was "
                       "trained on it. `distill cache CONFIG` recomputes it") from e

