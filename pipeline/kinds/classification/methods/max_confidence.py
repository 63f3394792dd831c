"""Max-confidence baseline: per sample, follow the teacher that is most sure of itself."""

from __future__ import annotations

import torch

from distill.pipeline.kinds.classification.methods.base import (
    TargetMethod,
    TeacherBatch,
    is_scores,
    teacher_values,
)


class MaxConfidence(TargetMethod):
    """Per row, the valid teacher with the highest max probability at T. For scores, the teacher
    whose sigmoid is farthest from 0.5, i.e. with the largest |score|."""

    name = "max-confidence"

    def target(self, teachers: TeacherBatch) -> torch.Tensor:
        values = teacher_values(teachers, self.temperature)
        confidence = values.abs().squeeze(-1) if is_scores(teachers) else values.amax(-1)
        choice = confidence.masked_fill(~teachers.valid, float("-inf")).argmax(1)
        return values[torch.arange(values.shape[0]), choice]
