"""Cache one teacher shard: the unit of work the Prefect flows schedule, retry and skip.

A `TeacherCache` ties a teacher config to its cache folder: the manifest, which shards are
still to do, computing and publishing one. What a teacher runs and which columns it writes
depends on its kind, so each kind's package has a subclass (`cache.py` in pipeline/kinds/*/);
`teacher_cache` picks it through the kinds registry. The model is loaded on first use, so a
re-run over a complete cache (or over only-corrupt shards) does the least teacher work.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from typing import Callable

import numpy as np
import pyarrow as pa

from distill.pipeline.backends import TeacherInference, backend_for
from distill.pipeline.config import ConfigError, TeacherConfig
from distill.pipeline.kinds import imported, kind_of
from distill.pipeline.teacher import TeacherIdentity, identify
from distill.storage import FORMAT_VERSION, code_version
from distill.storage.cache import Cache
from distill.storage.records import CacheError, Plan, ShardEntry, TeacherManifest


class NonFiniteOutput(ValueError):
    """A teacher produced NaN or inf; the message names the teacher, shard and rows."""


_LOADED: dict[str, TeacherInference] = {}
_LOADED_LOCK = threading.Lock()


def load_inference(identity: TeacherIdentity, config: TeacherConfig,
                inference_class: type[TeacherInference], alone: bool = False) -> TeacherInference:
    """One loaded model per teacher id and process, shared by all of its shard tasks; `alone`
    first drops every other teacher's model (a cluster worker keeps one teacher at a time)."""
    with _LOADED_LOCK:
        if alone:
            for other in [k for k in _LOADED if k != identity.teacher_id]:
                del _LOADED[other]
        if identity.teacher_id not in _LOADED:
            _LOADED[identity.teacher_id] = inference_class(config, identity.model_dir)
        return _LOADED[identity.teacher_id]


def release_inference(teacher_id: str) -> None:
    with _LOADED_LOCK:
        _LOADED.pop(teacher_id, None)


def teacher_cache(cache: Cache, plan: Plan, config: TeacherConfig, where: str = "config") -> "TeacherCache":
    """The cache of one teacher, of the class its kind names (pipeline/kinds/)."""
    kind = kind_of(config, f"{where}: teachers[{config.name}].model")
    return imported(kind.cache)(cache, plan, config, where)


class TeacherCache(ABC):
    """What every kind shares; subclasses set `kind` (which, with `teachers[].backend`, picks
    the inference class: pipeline/backends.py) and `compression` and say what the model is (`describe`),
    which columns it writes (`columns`) and which seed a shard uses."""

    kind: str
    compression: str | None = None

    def __init__(self, cache: Cache, plan: Plan, config: TeacherConfig, where: str = "config"):
        self.cache, self.plan, self.config = cache, plan, config
        self.backend = backend_for(config, self.kind, where)
        if plan.pairs and not self.backend.pairs:
            raise ConfigError(f"{where}: teachers[{config.name}]: the corpus is a pair corpus "
                              f"(corpus.pair_column {plan.pair_column}), which {self.kind} teachers "
                              f"on backend '{config.backend}' cannot read; use a classification "
                              "teacher, or a corpus without pair_column")
        self.identity = identify(config, plan.plan_id, f"{where}: teachers[{config.name}].model")
        self.teacher_id = self.identity.teacher_id
        self._home_pid = os.getpid()
        self._schema: pa.Schema | None = None

    @property
    def inference(self):
        """The loaded model, owned by the process's registry and never by this object: Prefect
        keeps task parameters (this object) until the interpreter exits, so a model held here
        would outlive `release_inference`; and shard tasks sent to other processes carry only the
        settings, each worker loading its own model once.

        In a Ray/Dask worker (another process than the one that planned the run) nothing
        releases the model when the teacher is done, so a worker that moves on to another
        teacher frees the previous one: one model per worker and GPU."""
        return load_inference(self.identity, self.config, self.backend.inference_class(),
                           alone=os.getpid() != self._home_pid)

    @abstractmethod
    def describe(self) -> tuple[dict, pa.Schema]:
        """(model settings for the manifest, the Arrow schema of its shards), read from the
        model's files without loading its weights."""

    @abstractmethod
    def columns(self, output, valid: np.ndarray) -> dict[str, pa.Array]:
        """The payload columns of one shard (besides `sample_id`)."""

    def seed_base(self) -> int:
        return 0

    def shard_counts(self, output, valid: np.ndarray) -> dict:
        """Kind-specific figures of one shard recorded in its entry (besides the rows of note)."""
        return {}

    def start(self) -> TeacherManifest:
        """Record the manifest (settings, fingerprint, schema) before the first shard."""
        model_settings, schema = self.describe()
        settings = {**self.identity.settings, "model": str(self.config.model), **model_settings}
        manifest = TeacherManifest(
            teacher_id=self.teacher_id, name=self.config.name, plan_id=self.plan.plan_id,
            format_version=FORMAT_VERSION, code_version=code_version(),
            fingerprint=self.identity.fingerprint, settings=settings,
            arrow_schema=TeacherManifest.encode_schema(schema))
        recorded = self.cache.start_teacher(manifest)
        self._schema = recorded.schema
        return recorded

    def pending(self, verify: bool = True) -> tuple[list[int], list[str]]:
        """Shards still to compute: never published, or published but truncated/corrupt (or
        with an entry that is not valid)."""
        broken: list[str] = []
        entries = self.cache.published_shards(self.teacher_id, broken)
        todo, problems = [], [f"{path} is not a valid shard entry" for path in broken]
        for index in range(len(self.plan.shards)):
            entry = entries.get(index)
            problem = None if entry is None else self.cache.shard_problem(self.teacher_id, entry, verify)
            if entry is None or problem:
                todo.append(index)
            if problem:
                problems.append(problem)
        return todo, problems

    def reuse(self, todo: list[int]) -> list[int]:
        """Publish the shards of `todo` that this same teacher (same weights, same settings)
        already computed over the same rows for another plan, and return the ones still to
        compute. A corpus that grows by appending gets a new plan whose leading shards hold the
        same rows at the same places: their text shards are byte-identical, so the text shard's
        sha256 identifies the rows, and the teacher's output for them is copied (verified as it
        is read, with this cache's ids written into its metadata) instead of recomputed."""
        if not todo:  # nothing to compute: skip reading every other manifest
            return []
        donors = self._donors()
        left = []
        for index in todo:
            donor = donors.get((index, self.plan.shards[index].sha256))
            if donor is None:
                left.append(index)
            else:
                self._adopt(index, *donor)
        return left

    def _donors(self) -> dict[tuple[int, str], tuple[str, ShardEntry]]:
        """(shard index, text shard sha256) -> (teacher id, entry) over the complete caches of
        this teacher on other plans. `backend` is compared even where this teacher's settings
        leave it out (the default): a torch teacher must not adopt another backend's output."""
        found = {}
        for m in self.cache.manifests():
            same = (m.teacher_id != self.teacher_id and m.complete
                    and m.fingerprint == self.identity.fingerprint
                    and all(m.settings.get(k) == v for k, v in self.identity.settings.items())
                    and m.settings.get("backend") == self.identity.settings.get("backend"))
            plan = self.cache.find_plan(m.plan_id) if same else None
            if plan is None:
                continue
            for entry in m.shards:
                if entry.index < len(plan.shards):
                    found[(entry.index, plan.shards[entry.index].sha256)] = (m.teacher_id, entry)
        return found

    def _adopt(self, index: int, donor: str, entry: ShardEntry) -> ShardEntry:
        table = self.cache.read_shard(donor, entry)
        ids = self.cache.read_text_shard(self.plan, index).column("sample_id")
        if not table.column("sample_id").equals(ids):
            raise CacheError(f"teacher cache {donor} shard {index}: its sample ids differ from plan "
                             f"{self.plan.plan_id}'s although their rows hash alike; delete "
                             f"{self.cache.teacher_dir(donor)} and re-run `distill cache`")
        return self.cache.write_shard(self.teacher_id, index, self._with_metadata(table, index),
                                      compression=self.compression, first_row=entry.first_row,
                                      **entry.counts())

    def compute(self, index: int, on_rows: Callable[[int], None] | None = None) -> ShardEntry:
        """Run the teacher over plan shard `index` and publish the result."""
        text = self.cache.read_text_shard(self.plan, index)
        texts = text.column("text").to_pylist()
        pairs = {"pairs": text.column("pair").to_pylist()} if self.plan.pairs else {}
        output = self.inference.run(texts, seed=self._seed(index), on_rows=on_rows, **pairs)
        valid = output.finite_rows()
        if not valid.all() and self.config.on_nonfinite == "error":
            bad = np.flatnonzero(~valid)
            rows = text.column("row").to_numpy()[bad][:5].tolist()
            raise NonFiniteOutput(
                f"teacher '{self.config.name}' ({self.config.model}) produced NaN/inf for "
                f"{len(bad)} rows of shard {index} (corpus rows {rows}...). Check the weights or "
                "use dtype: float32; or set on_nonfinite: skip to store them as null and count "
                "them.")
        table = self._table(text.column("sample_id"), output, valid, index)
        return self.cache.write_shard(self.teacher_id, index, table, compression=self.compression,
                                      first_row=self.plan.shards[index].first_row,
                                      truncated=int(output.truncated.sum()),
                                      nonfinite=int((~valid).sum()),
                                      **self.shard_counts(output, valid))

    def finalize(self) -> TeacherManifest:
        return self.cache.finalize(self.teacher_id, self.plan)

    def _seed(self, index: int) -> int:
        return self.seed_base() * 100_003 + index

    def _table(self, ids: pa.ChunkedArray, output, valid: np.ndarray, index: int) -> pa.Table:
        table = pa.table({"sample_id": ids, **self.columns(output, valid)})
        if not table.schema.equals(self.schema):  # the manifest is the contract readers rely on
            raise RuntimeError(f"teacher {self.config.name}: shard {index} has schema {table.schema}, "
                               f"its manifest records {self.schema}")
        return self._with_metadata(table, index)

    @property
    def schema(self) -> pa.Schema:
        """The schema `start` recorded; read back from the manifest only where `start` ran on
        another copy of this object (a copy made before `start` travels to Ray and Dask workers)."""
        if self._schema is None:
            self._schema = self.cache.load_manifest(self.teacher_id).schema
        return self._schema

    def _with_metadata(self, table: pa.Table, index: int) -> pa.Table:
        meta = {"teacher_id": self.teacher_id, "plan_id": self.plan.plan_id, "shard": index,
                "name": self.config.name, "format_version": FORMAT_VERSION,
                "settings": self.identity.settings, "fingerprint": self.identity.fingerprint}
        return table.replace_schema_metadata({"distill": json.dumps(meta, sort_keys=True)})
