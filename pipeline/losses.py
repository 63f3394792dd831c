"""Distillation losses: a student's outputs against soft teacher targets, with per-sample weights.

Every loss is a per-row value reduced by `weighted_mean`, so per-sample weights (MUKA's margin,
rows without any teacher) mean the same thing everywhere.
"""

from __future__ import annotations

import torch


def weighted_mean(per_row: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Plain mean, or sum(w·l)/sum(w): normalising by the weights keeps the loss scale (and so the
    effective learning rate) independent of their size. All-zero weights give 0, not NaN."""
    if weights is None:
        return per_row.mean()
    weights = weights.to(per_row.dtype)
    return (weights * per_row).sum() / weights.sum().clamp_min(1e-12)


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
