"""Single-teacher KD: the baseline every ensemble method should beat."""

from __future__ import annotations

import torch

from distill.pipeline.kinds.classification.methods.base import (
    TargetMethod,
    TeacherBatch,
    teacher_values,
)


class SingleTeacher(TargetMethod):
    """Distil from teacher `teacher` alone; rows where it is invalid are skipped."""

    name = "single"

    def __init__(self, temperature: float = 1.0, teacher: int = 0, **options):
        super().__init__(temperature, **options)
        if teacher < 0:
            raise ValueError(f"method {self.name}: teacher must be >= 0, got {teacher}")
        self.teacher = teacher

    def target(self, teachers: TeacherBatch) -> torch.Tensor:
        return teacher_values(teachers, self.temperature)[:, self.teacher]

    def has_target(self, teachers: TeacherBatch) -> torch.Tensor:
        return teachers.valid[:, self.teacher]
