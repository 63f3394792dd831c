"""Cache one teacher shard: the unit of work the Prefect flows schedule, retry and skip.

`TeacherCache` ties a teacher config to its cache folder. Its model is loaded on first use,
so a re-run over a complete cache (or over only-corrupt shards) does the least teacher work.
"""

from __future__ import annotations

import json
import threading
from functools import cached_property
from typing import Callable

import numpy as np
import pyarrow as pa

from pipeline.config import TeacherConfig
from pipeline.runner import ClassificationRunner, ShardOutput
from pipeline.teacher import TeacherIdentity, identify
from storage import FORMAT_VERSION, code_version
from storage.cache import Cache
from storage.columns import fixed_rows, ragged_rows
from storage.records import Plan, ShardEntry, TeacherManifest


class NonFiniteOutput(ValueError):
    """A teacher produced NaN or inf; the message names the teacher, shard and rows."""


_RUNNERS: dict[str, ClassificationRunner] = {}
_RUNNERS_LOCK = threading.Lock()


def load_runner(identity: TeacherIdentity, config: TeacherConfig) -> ClassificationRunner:
    """One loaded model per teacher id and process, shared by all of its shard tasks."""
    with _RUNNERS_LOCK:
        if identity.teacher_id not in _RUNNERS:
            _RUNNERS[identity.teacher_id] = ClassificationRunner(config, identity.model_dir)
        return _RUNNERS[identity.teacher_id]


def release_runner(teacher_id: str) -> None:
    with _RUNNERS_LOCK:
        _RUNNERS.pop(teacher_id, None)


class TeacherCache:
    def __init__(self, cache: Cache, plan: Plan, config: TeacherConfig, where: str = "config"):
        self.cache, self.plan, self.config = cache, plan, config
        self.identity = identify(config, plan.plan_id, f"{where}: teachers[{config.name}].model")
        self.teacher_id = self.identity.teacher_id

    @cached_property
    def runner(self) -> ClassificationRunner:
        return load_runner(self.identity, self.config)

    def start(self) -> TeacherManifest:
        """Record the manifest (settings, fingerprint, schema) before the first shard."""
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(self.identity.model_dir, local_files_only=True)
        num_labels = model_config.num_labels
        if self.config.logits_dtype == "float16" and num_labels < 2:
            raise ValueError(f"teachers[{self.config.name}].logits_dtype: float16 needs at least "
                             "2 classes; single scores stay float32 so votes compare exactly")
        labels = [model_config.id2label[i] for i in range(num_labels)]
        settings = {**self.identity.settings, "model": str(self.config.model),
                    "num_labels": num_labels, "labels": labels,
                    "hidden_size": getattr(model_config, "hidden_size", None)}
        manifest = TeacherManifest(
            teacher_id=self.teacher_id, name=self.config.name, plan_id=self.plan.plan_id,
            format_version=FORMAT_VERSION, code_version=code_version(),
            fingerprint=self.identity.fingerprint, settings=settings,
            columns=_column_types(self.config, num_labels, settings["hidden_size"]))
        return self.cache.start_teacher(manifest)

    def pending(self, verify: bool = True) -> tuple[list[int], list[str]]:
        """Shards still to compute: never published, or published but truncated/corrupt."""
        entries = self.cache.published_shards(self.teacher_id)
        todo, problems = [], []
        for index in range(len(self.plan.shards)):
            entry = entries.get(index)
            problem = None if entry is None else self.cache.shard_problem(self.teacher_id, entry, verify)
            if entry is None or problem:
                todo.append(index)
            if problem:
                problems.append(problem)
        return todo, problems

    def compute(self, index: int, on_rows: Callable[[int], None] | None = None) -> ShardEntry:
        """Run the teacher over plan shard `index` and publish the result."""
        text = self.cache.read_text_shard(self.plan, index)
        texts = text.column("text").to_pylist()
        output = self.runner.run(texts, seed=self._seed(index), on_rows=on_rows)
        valid = _finite_rows(output)
        if not valid.all() and self.config.on_nonfinite == "error":
            bad = np.flatnonzero(~valid)
            rows = text.column("row").to_numpy()[bad][:5].tolist()
            raise NonFiniteOutput(
                f"teacher '{self.config.name}' ({self.config.model}) produced NaN/inf for "
                f"{len(bad)} rows of shard {index} (corpus rows {rows}...). Check the weights or "
                "use dtype: float32; or set on_nonfinite: skip to store them as null and count "
                "them.")
        table = self._table(text.column("sample_id"), output, valid, index)
        return self.cache.write_shard(self.teacher_id, index, table,
                                      first_row=self.plan.shards[index].first_row,
                                      truncated=int(output.truncated.sum()),
                                      nonfinite=int((~valid).sum()))

    def finalize(self) -> TeacherManifest:
        return self.cache.finalize(self.teacher_id, self.plan)

    def _seed(self, index: int) -> int:
        base = self.config.mc_dropout.seed if self.config.mc_dropout else 0
        return base * 100_003 + index

    def _table(self, ids: pa.ChunkedArray, out: ShardOutput, valid: np.ndarray, index: int) -> pa.Table:
        logits_type = np.float16 if self.config.logits_dtype == "float16" else np.float32
        columns = {"sample_id": ids, "logits": fixed_rows(out.logits.astype(logits_type), valid),
                   "truncated": pa.array(out.truncated)}
        if out.mc_probs is not None:
            columns["mc_probs"] = fixed_rows(out.mc_probs.astype(np.float32), valid)
            columns["mc_entropy"] = pa.array(out.mc_entropy.astype(np.float32), mask=~valid)
            columns["mc_mutual_info"] = pa.array(out.mc_mutual_info.astype(np.float32), mask=~valid)
        if out.features is not None:
            columns["features"] = (ragged_rows(out.features) if isinstance(out.features, list)
                                   else fixed_rows(out.features, valid))
        table = pa.table(columns)
        meta = {"teacher_id": self.teacher_id, "plan_id": self.plan.plan_id, "shard": index,
                "name": self.config.name, "format_version": FORMAT_VERSION,
                "settings": self.identity.settings, "fingerprint": self.identity.fingerprint}
        return table.replace_schema_metadata({"distill": json.dumps(meta, sort_keys=True)})


def _finite_rows(out: ShardOutput) -> np.ndarray:
    valid = np.isfinite(out.logits).all(axis=1)
    if out.mc_probs is not None:
        valid &= np.isfinite(out.mc_probs).all(axis=1)
    return valid


def _column_types(config: TeacherConfig, num_labels: int, hidden: int | None) -> dict[str, str]:
    columns = {"sample_id": "int64", "logits": f"fixed_size_list<{config.logits_dtype}>[{num_labels}]",
               "truncated": "bool"}
    if config.mc_dropout:
        columns.update(mc_probs=f"fixed_size_list<float32>[{num_labels}]", mc_entropy="float32",
                       mc_mutual_info="float32")
    if config.features:
        width = config.features.project_to or hidden
        columns["features"] = (f"fixed_size_list<float16>[{width}]" if config.features.pooling == "mean"
                               else f"list<fixed_size_list<float16>[{width}]>")
    return columns
