"""The cache of a classification, relevance or regression teacher: one row of logits per text
(plus MC-dropout statistics and features when the teacher config asks for them; every column:
docs/cache-format.md)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from distill.pipeline.caching import TeacherCache
from distill.pipeline.config import ClassificationTeacherConfig
from distill.pipeline.kinds.classification.inference import ShardOutput
from distill.storage.columns import fixed_rows, ragged_rows


class ClassificationCache(TeacherCache):
    """Sequence classifiers, relevance and regression teachers: one row of logits per text."""

    kind = "classification"

    def describe(self) -> tuple[dict, pa.Schema]:
        from transformers import AutoConfig

        model_config = AutoConfig.from_pretrained(self.identity.model_dir, local_files_only=True,
                                                  trust_remote_code=self.config.trust_remote_code)
        num_labels = model_config.num_labels
        if self.config.logits_dtype == "float16" and num_labels < 2:
            raise ValueError(f"teachers[{self.config.name}].logits_dtype: float16 needs at least "
                             "2 classes; single scores stay float32 so votes compare exactly")
        hidden = getattr(model_config, "hidden_size", None)
        settings = {"num_labels": num_labels, "hidden_size": hidden,
                    "labels": [model_config.id2label[i] for i in range(num_labels)]}
        return settings, _schema(self.config, num_labels, hidden)

    def seed_base(self) -> int:
        return self.config.mc_dropout.seed if self.config.mc_dropout else 0

    def columns(self, out: ShardOutput, valid: np.ndarray) -> dict[str, pa.Array]:
        logits_type = np.float16 if self.config.logits_dtype == "float16" else np.float32
        columns = {"logits": fixed_rows(out.logits.astype(logits_type), valid),
                   "truncated": pa.array(out.truncated)}
        if out.mc_probs is not None:
            columns["mc_probs"] = fixed_rows(out.mc_probs.astype(np.float32), valid)
            columns["mc_entropy"] = pa.array(out.mc_entropy.astype(np.float32), mask=~valid)
            columns["mc_mutual_info"] = pa.array(out.mc_mutual_info.astype(np.float32), mask=~valid)
        if out.features is not None:
            columns["features"] = (ragged_rows(out.features) if isinstance(out.features, list)
                                   else fixed_rows(out.features, valid))
        return columns


def _schema(config: ClassificationTeacherConfig, num_labels: int, hidden: int | None) -> pa.Schema:
    logits = pa.float16() if config.logits_dtype == "float16" else pa.float32()
    fields = [("sample_id", pa.int64()), ("logits", pa.list_(logits, num_labels)), ("truncated", pa.bool_())]
    if config.mc_dropout:
        fields += [("mc_probs", pa.list_(pa.float32(), num_labels)), ("mc_entropy", pa.float32()),
                   ("mc_mutual_info", pa.float32())]
    if config.features:
        vector = pa.list_(pa.float16(), config.features.project_to or hidden)
        fields.append(("features", vector if config.features.pooling == "mean" else pa.list_(vector)))
    return pa.schema(fields)
