"""Mean baseline: the average of the valid teachers' probabilities (or scores)."""

from __future__ import annotations

import torch

from distill.pipeline.kinds.classification.methods.base import (
    TargetMethod,
    TeacherBatch,
    is_scores,
    members,
    renormalise,
    teacher_values,
)
from distill.pipeline.methods import masked_mean


class Mean(TargetMethod):
    """Per class, the mean probability at T over the valid teachers that cover it, renormalised
    (so teachers with different label subsets still give a distribution); C == 1: mean score."""

    name = "mean"

    def target(self, teachers: TeacherBatch) -> torch.Tensor:
        pooled = masked_mean(teacher_values(teachers, self.temperature), members(teachers))
        return pooled if is_scores(teachers) else renormalise(pooled)
