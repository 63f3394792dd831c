"""What the methods of every teacher kind share: their output and the reductions they weight
rows and teachers with. The methods themselves live in their kind's package (pipeline/kinds/),
registered under (kind, name).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MethodOutput:
    loss: torch.Tensor                           # scalar, differentiable w.r.t. student logits
    metrics: dict[str, float] = field(default_factory=dict)   # logged every step


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Mean over the entries where `mask` holds, 0 where none does."""
    total = torch.where(mask, values, 0.0).sum(dim)
    return total / mask.sum(dim).clamp_min(1)


def weighted_mean(per_row: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Plain mean, or sum(w·l)/sum(w): normalising by the weights keeps the loss scale (and so the
    effective learning rate) independent of their size. All-zero weights give 0, not NaN."""
    if weights is None:
        return per_row.mean()
    weights = weights.to(per_row.dtype)
    return (weights * per_row).sum() / weights.sum().clamp_min(1e-12)
