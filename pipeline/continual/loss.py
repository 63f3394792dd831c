"""The CDL distillation loss over the current task's classes (docs/continual.md).

    L = ce_weight * CE(s_cur, argmax t_cur) + (1 - ce_weight) * T^2 * KL(softmax(t_cur/T) || softmax(s_cur/T))

`cur` is the current task's class slice. Slicing the student's logits to it is the paper's
masking: CODA/L2P code keeps only the classes seen so far (`logits[:, :valid_out_dim]`) and
sets the past ones to -inf for the CE term, and the KL term already uses the current slice
only. Label-free: the CE target is the teacher's argmax (pseudo-labels in place of the paper's
gold labels; docs/continual.md). With several teachers the target is the mean of their
tempered probabilities over the slice (teachers that do not cover every class of the task, or
whose row was skipped, are left out); with one teacher it is the paper's loss exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.pipeline.kinds.classification.losses import kl_distill
from distill.pipeline.kinds.classification.methods.base import TeacherBatch
from distill.pipeline.methods import weighted_mean


def task_targets(teachers: TeacherBatch, classes: torch.Tensor,
                 temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(target probabilities [B, c] over `classes`, rows that have a usable teacher [B])."""
    usable = teachers.valid & teachers.covered[:, classes].all(1)[None]        # [B, K]
    probs = torch.softmax(teachers.logits[:, :, classes] / temperature, dim=-1)
    count = usable.sum(1, keepdim=True)
    target = (probs * usable[..., None]).sum(1) / count.clamp_min(1)
    return target, count[:, 0] > 0


def cdl_loss(student_logits: torch.Tensor, teachers: TeacherBatch, classes: torch.Tensor,
             temperature: float, ce_weight: float = 0.5,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    target, usable = task_targets(teachers, classes, temperature)
    weights = usable.float() if weights is None else weights * usable
    current = student_logits[:, classes]
    ce = weighted_mean(F.cross_entropy(current, target.argmax(-1), reduction="none"), weights)
    kl = kl_distill(current, target, temperature, weights)
    return ce_weight * ce + (1 - ce_weight) * kl, {"ce": ce.item(), "kl": kl.item()}
