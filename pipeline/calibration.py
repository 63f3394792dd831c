"""Per-teacher calibration, so teachers' outputs are on one scale before they are combined.

GOVERN compares each teacher with the student coordinate by coordinate, so a teacher that is
over-confident (or whose scores carry an offset) would bias every vote. Both fits are small and run
on a held-out set; the result is a (scale, bias) pair applied to the cached logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on labelled rows (logits [N, C],
    labels [N]); Guo et al. 2017. Optimising log T keeps T positive and the problem well scaled."""
    logits, labels = logits.detach().float(), labels.long()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def fit_affine(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Least-squares (scale, bias) with scale·scores + bias ≈ targets (both [N]): maps a score
    teacher onto a reference scale (held-out targets or a reference teacher's scores)."""
    scores = scores.detach().double()
    design = torch.stack([scores, torch.ones_like(scores)], dim=1)
    solution = torch.linalg.lstsq(design, targets.detach().double().unsqueeze(1)).solution
    return float(solution[0]), float(solution[1])


def apply_calibration(logits: torch.Tensor, scale: float, bias: float) -> torch.Tensor:
    """scale·logits + bias; a temperature T is scale = 1/T, bias = 0."""
    return logits * scale + bias
