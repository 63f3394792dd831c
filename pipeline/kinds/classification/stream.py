"""Training batches from classification and score caches: the logits (calibrated, mapped into
the student's label space), MC-dropout statistics, features and prompt vectors of the gathered
rows (the order and gathering: pipeline/stream.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.pipeline.kinds.classification.features import TeacherFeatures, feature_layout
from distill.pipeline.kinds.classification.labels import LabelSpace
from distill.pipeline.kinds.classification.methods.base import TeacherBatch
from distill.pipeline.stream import CacheStream, scatter_array, scatter_list
from distill.storage.aligned import AlignedCache
from distill.storage.columns import to_matrix


@dataclass
class Batch:
    texts: list[str]
    sample_ids: np.ndarray
    teachers: TeacherBatch
    weights: torch.Tensor      # [B]: 1, or 0 for rows that only pad a rank's last batch
    pairs: list[str] | None = None   # pair corpora: each text's second text (the passage)
    features: list[TeacherFeatures | None] | None = None   # per teacher, when requested
    teacher_prompts: torch.Tensor | None = None   # [B, sum D]: prompt-based teachers' vectors, NaN if null


class ClassificationStream(CacheStream):
    """`labels` is the student's label space; `calibration` each teacher's (scale, bias) on its
    logits; `features` reads the teachers' cached features too."""

    def __init__(self, aligned: AlignedCache, labels: LabelSpace, batch_size: int, *,
                 calibration: list[tuple[float, float]] | None = None, features: bool = False,
                 **order):
        super().__init__(aligned, batch_size, **order)
        self.labels = labels
        self.features = [feature_layout(m) if features else None for m in aligned.manifests]
        self.prompted = [k for k, m in enumerate(aligned.manifests) if "prompt_vector" in m.schema.names]
        self.calibration = calibration or [(1.0, 0.0)] * len(aligned.manifests)

    def _make_batch(self, texts: list[str], sample_ids: np.ndarray, per_teacher: list[list],
                    weights: torch.Tensor, pairs: list[str] | None, groups: torch.Tensor | None) -> Batch:
        n = len(texts)
        teachers = self._teacher_batch(per_teacher, n)
        teachers.groups = groups
        features = [self._features(parts, layout, n) if layout else None
                    for parts, layout in zip(per_teacher, self.features)]
        prompts = [scatter_matrix(per_teacher[k], "prompt_vector", n) for k in self.prompted]
        return Batch(texts=texts, sample_ids=sample_ids, weights=weights, teachers=teachers, pairs=pairs,
                     features=features if any(self.features) else None,
                     teacher_prompts=torch.from_numpy(np.concatenate(prompts, 1)) if prompts else None)

    @staticmethod
    def _features(parts, layout: tuple[int, bool], n: int) -> TeacherFeatures:
        """Pooled features as [B, 1, D]; token-level ones zero-padded to [B, T_max, D] + mask."""
        width, pooled = layout
        if pooled:
            values = torch.from_numpy(scatter_matrix(parts, "features", n)).unsqueeze(1)
            valid = torch.isfinite(values).all(-1)              # skipped rows are stored as null
            return TeacherFeatures(values.nan_to_num(0.0), valid, pooled=True)
        rows = scatter_list([(p, _token_blocks(t.column("features"))) for p, t in parts], n)
        longest = max(len(r) for r in rows)
        values = torch.zeros(n, longest, width)
        mask = torch.zeros(n, longest, dtype=torch.bool)
        for i, block in enumerate(rows):
            values[i, :len(block)] = torch.from_numpy(block.astype(np.float32))
            mask[i, :len(block)] = True
        return TeacherFeatures(values, mask, pooled=False)

    def _teacher_batch(self, per_teacher, n: int) -> TeacherBatch:
        K, C = len(per_teacher), self.labels.num_labels
        logits = torch.zeros(n, K, C)
        valid = torch.ones(n, K, dtype=torch.bool)
        has_mc = all("mc_probs" in parts[0][1].column_names for parts in per_teacher)
        mc_probs = torch.zeros(n, K, C) if has_mc else None
        mc_entropy = torch.zeros(n, K) if has_mc else None
        for k, parts in enumerate(per_teacher):
            mapping = torch.from_numpy(self.labels.maps[k])
            scale, bias = self.calibration[k]
            raw = torch.from_numpy(scatter_matrix(parts, "logits", n)).float()
            ok = torch.isfinite(raw).all(1)
            valid[:, k] = ok
            logits[:, k, mapping] = torch.nan_to_num(raw * scale + bias) * ok[:, None]
            if has_mc:
                mc_probs[:, k, mapping] = torch.nan_to_num(
                    torch.from_numpy(scatter_matrix(parts, "mc_probs", n)).float())
                mc_entropy[:, k] = torch.nan_to_num(torch.from_numpy(
                    scatter_array([(p, t.column("mc_entropy").to_numpy(zero_copy_only=False))
                                    for p, t in parts], n)).float())
        return TeacherBatch(logits=logits, covered=torch.from_numpy(self.labels.covered), valid=valid,
                            mc_probs=mc_probs, mc_entropy=mc_entropy)


def _token_blocks(column) -> list[np.ndarray]:
    """list<fixed_size_list<float16>[D]> -> one [T_i, D] array per row (views of one buffer)."""
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    matrix = to_matrix(column.flatten())
    offsets = column.offsets.to_numpy() - column.offsets[0].as_py()
    return [matrix[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def scatter_matrix(parts, column: str, n: int) -> np.ndarray:
    return scatter_array([(p, to_matrix(t.column(column)).astype(np.float32)) for p, t in parts], n)
