"""Distillation losses: a student's outputs against soft teacher targets, with per-sample weights.

Every loss is a per-row value reduced by `weighted_mean`, so per-sample weights (MUKA's margin,
rows without any teacher) mean the same thing everywhere.
"""

from __future__ import annotations

import torch

from distill.pipeline.methods import weighted_mean


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at `temperature` from logits [..., C]: a softmax over classes, or a sigmoid for
    one relevance logit (C == 1), where a softmax would always give 1."""
    scaled = logits / temperature
    return torch.sigmoid(scaled) if logits.shape[-1] == 1 else torch.softmax(scaled, dim=-1)


def kl_distill(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(target ‖ softmax(student / T)) per row [B, C], (weighted) mean over rows.

    The T² factor keeps gradient sizes independent of T (Hinton et al. 2015); xlogy makes classes
    with zero target mass (MUKA's zero-padded targets) contribute exactly 0.
    """
    log_student = torch.log_softmax(student_logits / temperature, dim=-1)
    per_row = (torch.xlogy(target_probs, target_probs) - target_probs * log_student).sum(-1)
    return temperature ** 2 * weighted_mean(per_row, weights)


def mse_scores(student: torch.Tensor, target: torch.Tensor,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """½·(s − t)² per row for single scores ([B, 1] or [B]), (weighted) mean over rows.

    The ½ makes the per-row gradient s − t: the scale of GOVERN's scalar rule, so a method switch
    does not silently change the effective learning rate.
    """
    diff = student.reshape(-1) - target.reshape(-1)
    return weighted_mean(0.5 * diff ** 2, weights)


def distill_loss(student_logits: torch.Tensor, target: torch.Tensor, temperature: float,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss towards one target per row: KL at `temperature` for class probabilities (C ≥ 2),
    MSE for scores (C == 1), which have no distribution to compare."""
    if target.shape[-1] == 1:
        return mse_scores(student_logits, target, weights)
    return kl_distill(student_logits, target, temperature, weights)


# ---- ranking losses over query groups (single scores; TeacherBatch.groups numbers a batch's
# groups). A row with weight 0 is not a member of its group (a teacher's invalid row, a rank's
# padding); a group's weight is the mean of its members' weights, and a group with fewer than
# two members has nothing to rank and weight 0.

def _group_stats(groups: torch.Tensor, weights: torch.Tensor | None, rows: int):
    """(members [B] bool, group count, per-group weight [G]) of a batch."""
    weights = torch.ones(rows) if weights is None else weights.to(torch.float32)
    weights = weights.to(groups.device)
    members = weights > 0
    count = int(groups.max()) + 1 if rows else 0
    size = torch.zeros(count, device=groups.device).index_add_(0, groups, members.float())
    total = torch.zeros(count, device=groups.device).index_add_(0, groups, torch.where(members, weights, 0.0))
    return members, count, torch.where(size >= 2, total / size.clamp_min(1), 0.0)


def group_log_softmax(scores: torch.Tensor, groups: torch.Tensor, members: torch.Tensor,
                      count: int) -> torch.Tensor:
    """[B] log-softmax of `scores` within each group over its members (non-members: 0)."""
    masked = torch.where(members, scores, float("-inf"))
    top = torch.full((count,), float("-inf"), device=scores.device, dtype=scores.dtype)
    top = top.scatter_reduce(0, groups, masked, "amax").detach()
    shifted = masked - top[groups].nan_to_num(0.0, neginf=0.0)
    sums = torch.zeros(count, device=scores.device, dtype=scores.dtype).index_add_(
        0, groups, torch.where(members, shifted.exp(), 0.0))
    return torch.where(members, shifted - sums.clamp_min(1e-30).log()[groups], 0.0)


def listwise_kl(student: torch.Tensor, target: torch.Tensor, temperature: float,
                groups: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(softmax_g(t / T) ‖ softmax_g(s / T)) per query group g, weighted mean over groups:
    the listwise cross-encoder distillation loss (the student matches the teacher's
    distribution over a query's candidates; shifting all of a group's scores changes nothing)."""
    s, t = student.reshape(-1), target.reshape(-1)
    members, count, group_w = _group_stats(groups, weights, len(s))
    log_s = group_log_softmax(s / temperature, groups, members, count)
    log_t = group_log_softmax(t / temperature, groups, members, count)
    per_row = torch.where(members, log_t.exp() * (log_t - log_s), 0.0)
    per_group = torch.zeros(count, device=s.device, dtype=s.dtype).index_add_(0, groups, per_row)
    return temperature ** 2 * weighted_mean(per_group, group_w)


def margin_mse(student: torch.Tensor, target: torch.Tensor, temperature: float,
               groups: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Margin-MSE: over every pair (i, j) of a group's members, ½·((s_i − s_j) − (t_i − t_j))²,
    mean over the group's pairs, weighted mean over groups (the standard cross-encoder →
    student ranking loss; only score differences are learnt). With d = s − t, a group's pair
    sum is ½·(n·Σd² − (Σd)²), so no pair is enumerated. `temperature` is not used."""
    d = student.reshape(-1) - target.reshape(-1)
    members, count, group_w = _group_stats(groups, weights, len(d))
    d = torch.where(members, d, 0.0)
    zeros = torch.zeros(count, device=d.device, dtype=d.dtype)
    n = zeros.index_add(0, groups, members.to(d.dtype))
    total = zeros.index_add(0, groups, d)
    squares = zeros.index_add(0, groups, d ** 2)
    pairs = (n * (n - 1) / 2).clamp_min(1)
    return weighted_mean(0.5 * (n * squares - total ** 2) / pairs, group_w)


def pointwise(student: torch.Tensor, target: torch.Tensor, temperature: float,
              groups: torch.Tensor | None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE per candidate (`mse_scores`), groups and temperature unused: GOVERN's setting."""
    return mse_scores(student, target, weights)


# `train.loss` for single-score teachers: name -> loss(student, target, T, groups, weights).
SCORE_LOSSES = {"pointwise": pointwise, "listwise": listwise_kl, "margin_mse": margin_mse}
GROUP_LOSSES = frozenset({"listwise", "margin_mse"})   # those that need TeacherBatch.groups


def score_loss(name: str, student: torch.Tensor, target: torch.Tensor, temperature: float,
               groups: torch.Tensor | None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The score loss `name`; a group loss without groups is an error, never a silent 0."""
    if name in GROUP_LOSSES and groups is None:
        raise ValueError(f"train.loss {name} ranks the candidates of a query group: the batch has "
                         "no groups (set corpus.group_column)")
    return SCORE_LOSSES[name](student, target, temperature, groups, weights)


def score_gradient(name: str, student: torch.Tensor, target: torch.Tensor, temperature: float,
                   groups: torch.Tensor | None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """d loss / d student for one teacher's target (autograd on the outputs only: cheap), the
    gradient each teacher votes with in GOVERN under a group loss."""
    s = student.detach().reshape(-1).requires_grad_(True)
    with torch.enable_grad():
        loss = score_loss(name, s, target.detach().reshape(-1), temperature, groups, weights)
    return torch.autograd.grad(loss, s)[0].reshape(student.shape)
