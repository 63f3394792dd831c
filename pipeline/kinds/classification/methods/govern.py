"""GOVERN: gradient orientation vote (arXiv 2405.03764; docs/methods.md).

Each teacher's distillation gradient votes with its sign per output coordinate; the step uses the
mean gradient of the teachers on the majority side, so an outlying teacher is outvoted instead of
averaged in. The rule defines a gradient, not a target, so the method returns a surrogate loss.
"""

from __future__ import annotations

import torch

from distill.pipeline.kinds.classification.losses import GROUP_LOSSES, score_gradient, soft_targets
from distill.pipeline.kinds.classification.methods.base import (
    Method,
    TeacherBatch,
    is_scores,
    members,
    row_weights,
    teacher_probs,
    teacher_values,
)
from distill.pipeline.kinds.classification.methods.median import Median
from distill.pipeline.methods import MethodOutput, masked_mean


class Govern(Method):
    """Per-coordinate majority vote on the per-teacher gradients g_k = dL_k/ds.

    The combined gradient g is centred per sample for classes (it then sums to 0 like any softmax
    gradient; uncentred, students with hidden layers drift all logits down: docs/methods.md). The
    loss is the surrogate sum_i w_i·(s_i · g_i) / sum_i w_i, with g detached, so autograd gives
    exactly w_i·g_i / sum(w) per row: g / B without weights when every row has a teacher.
    Its value means nothing; log `govern/median_distance` instead.

    Scores under a group loss (`train.loss` listwise or margin_mse): each teacher's g_k is the
    gradient of that loss towards its own scores (autograd on the outputs), and the vote is
    still per candidate; the combined gradient is centred per query group, as a group loss's
    own gradient is (shifting a group's scores changes neither loss). That g already carries
    the loss's reduction over groups, so the surrogate is sum(s · g).
    """

    name = "govern"

    def __call__(self, student_logits: torch.Tensor, teachers: TeacherBatch,
                 weights: torch.Tensor | None = None) -> MethodOutput:
        student = student_logits.detach()
        grouped = is_scores(teachers) and self.loss in GROUP_LOSSES
        per_teacher = (self.group_gradients(student, teachers, weights) if grouped
                       else self.teacher_gradients(student, teachers))
        voters = members(teachers)
        votes = torch.where(voters, per_teacher.sign(), 0.0)
        majority = votes.sum(1).sign()                         # [B, C]; 0 is a tie
        agree = voters & ((votes == majority[:, None]) | (majority == 0)[:, None])
        step = masked_mean(per_teacher, agree)
        w = row_weights(teachers.valid.any(1), weights)
        if grouped:
            loss = (student_logits * centre_per_group(step, teachers.groups, w > 0)).sum()
        else:
            if not is_scores(teachers):
                step = step - step.mean(-1, keepdim=True)
            loss = (student_logits * (w[:, None] * step)).sum() / w.sum().clamp_min(1e-12)
        metrics = self.agreement(votes, majority, voters)
        metrics["govern/median_distance"] = self.median_distance(student, teachers)
        return MethodOutput(loss, metrics)

    def teacher_gradients(self, student: torch.Tensor, teachers: TeacherBatch) -> torch.Tensor:
        """[B, K, C] g_k: s − t_k for scores (½ squared error), T·(p_s − p_k) at temperature T
        for classes (the gradient of T²·KL(p_k ‖ p_s))."""
        t = self.temperature
        if is_scores(teachers):
            return student[:, None] - teacher_values(teachers, t)
        return t * (soft_targets(student, t)[:, None] - teacher_probs(teachers, t))

    def group_gradients(self, student: torch.Tensor, teachers: TeacherBatch,
                        weights: torch.Tensor | None) -> torch.Tensor:
        """[B, K, 1] g_k of the group loss towards teacher k's scores; a teacher's invalid rows
        are no members of their groups for it (and it casts no vote there)."""
        return torch.stack([
            score_gradient(self.loss, student, teacher_values(teachers, self.temperature)[:, k],
                           self.temperature, teachers.groups,
                           row_weights(teachers.valid[:, k], weights))
            for k in range(teachers.num_teachers)], 1)

    @staticmethod
    def agreement(votes: torch.Tensor, majority: torch.Tensor,
                  voters: torch.Tensor) -> dict[str, float]:
        """Per teacher, the fraction of its voted coordinates where its sign equals the majority
        (ties count as disagreement), so a user sees which teacher is outvoted."""
        agreed = (voters & (votes == majority[:, None])).sum((0, 2))
        rates = agreed / voters.sum((0, 2))
        return {f"govern/agreement/{k}": float(rate) for k, rate in enumerate(rates)}

    def median_distance(self, student: torch.Tensor, teachers: TeacherBatch) -> float:
        """Mean |p_s − median target| (|s − median score| for scores) over rows with a teacher:
        the robust target GOVERN approximately descends to (docs/methods.md)."""
        median = Median(self.temperature).target(teachers)
        own = student if is_scores(teachers) else soft_targets(student, self.temperature)
        return float((own - median).abs()[teachers.valid.any(1)].mean())


def centre_per_group(step: torch.Tensor, groups: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """[B, 1] `step` minus its mean over the members of each row's group (non-members: 0)."""
    flat = torch.where(members, step.reshape(-1), 0.0)
    count = int(groups.max()) + 1
    zeros = torch.zeros(count, dtype=flat.dtype, device=flat.device)
    sums = zeros.index_add(0, groups, flat)
    sizes = zeros.index_add(0, groups, members.to(flat.dtype))
    return torch.where(members, flat - (sums / sizes.clamp_min(1))[groups], 0.0).reshape(step.shape)
