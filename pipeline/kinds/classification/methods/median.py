"""Median baseline: robust to one outlying teacher, and the honest baseline for GOVERN
(docs/methods.md: centred GOVERN settles on the median's ranking)."""

from __future__ import annotations

import torch

from distill.pipeline.kinds.classification.methods.base import (
    TargetMethod,
    TeacherBatch,
    is_scores,
    masked_median,
    members,
    renormalise,
    teacher_values,
)


class Median(TargetMethod):
    """Per class, the median probability at T over the valid teachers that cover it, renormalised
    (per-class medians need not sum to 1); C == 1: median score."""

    name = "median"

    def target(self, teachers: TeacherBatch) -> torch.Tensor:
        pooled = masked_median(teacher_values(teachers, self.temperature), members(teachers))
        return pooled if is_scores(teachers) else renormalise(pooled)
