"""What a kind of student brings to the shared training loop (pipeline/trainer.py): its batches,
model and optimizer groups, the loss of one batch, its evaluation and report fields. Each kind's
package builds one in its `recipe.py`; the kinds registry (pipeline/kinds/) names it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from distill.pipeline.config import ConfigError, DistillConfig
from distill.pipeline.folders import resolve_model_dir
from distill.pipeline.stream import CacheStream


@dataclass
class Recipe:
    """What a kind of student brings to the shared loop: its batches, model and optimizer
    groups, the loss of one batch, its evaluation and extra report fields."""

    stream: CacheStream
    model: torch.nn.Module
    tokenizer: object
    param_groups: list[dict]
    loss: Callable                      # (model, batch, device) -> MethodOutput
    evaluate: Callable                  # (unwrapped model) -> dict
    report: dict = field(default_factory=dict)
    on_prepare: Callable = lambda accelerator: None   # prepares extra trainable modules
    settings: dict = field(default_factory=dict)      # what else a checkpoint must agree on


def student_source(config: DistillConfig) -> tuple[Path, int | None, str]:
    student = config.student
    if student is None or (student.model is None) == (student.from_teacher is None):
        raise ConfigError(f"{config.source}: student needs exactly one of `model` (a checkpoint) "
                          "or `from_teacher` (+ `layers`) to start from")
    if student.model:
        model_dir = resolve_model_dir(student.model, f"{config.source}: student.model")
        return model_dir, student.layers, student.pick
    teacher = config.teacher(student.from_teacher)
    return resolve_model_dir(teacher.model, f"{config.source}: teachers[{teacher.name}].model"), \
        student.layers, student.pick
