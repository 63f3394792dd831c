"""MUKA / MUKI: uncertainty-aware knowledge amalgamation (arXiv 2112.07327, 2210.05230;
lancopku/MUKI). Teachers may cover different label subsets; the more certain a teacher is on an
input, the more likely that input belongs to its label space, so its distribution weighs more."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.pipeline.kinds.classification.losses import kl_distill
from distill.pipeline.kinds.classification.methods.base import (
    Method,
    TeacherBatch,
    is_scores,
    row_weights,
    teacher_probs,
)
from distill.pipeline.methods import MethodOutput

MARGIN_EPS = 1e-6    # added to the certainty gap, as in lancopku/MUKI


class Muka(Method):
    """Target q = sum_k w_k · p_k with p_k the teacher's softmax at T over its covered classes,
    zero-padded to C; w = softmax(c / tau) over valid teachers ("soft") or one-hot at the most
    certain one ("hard"). With `margin_weight`, each row is weighted by the gap between its two
    highest certainties (teachers that conflict count less); the KL's weighted mean divides by
    the batch's sum of weights, i.e. the margin is normalised by its batch mean (the paper's code
    does not normalise, which scales the learning rate down).

    `normalize="batch"` (our default, not the paper's) standardises each teacher's certainty over
    the batch's rows before comparing teachers. The paper's c_k is comparable across teachers
    only if they are equally calibrated; fine-tuned teachers are not: on WordNet-12 (b-disjoint)
    one teacher was the most certain on 63 % of the pool although it owns a third of it, and the
    raw rule picked the owning teacher on 56 % of rows, the standardised one on 65 %
    (bench/quality.py). `normalize="none"` is the paper's rule.
    """

    name = "muka"

    def __init__(self, temperature: float = 1.0, mode: str = "soft", tau: float = 0.2,
                 margin_weight: bool = True, normalize: str = "batch", **options):
        super().__init__(temperature, **options)
        if mode not in ("soft", "hard"):
            raise ValueError(f"method {self.name}: mode must be 'soft' or 'hard', got {mode!r}")
        if normalize not in ("batch", "none"):
            raise ValueError(f"method {self.name}: normalize must be 'batch' or 'none', got {normalize!r}")
        if tau <= 0:
            raise ValueError(f"method {self.name}: tau must be > 0, got {tau}")
        self.mode, self.tau, self.margin_weight, self.normalize = mode, tau, margin_weight, normalize

    def __call__(self, student_logits: torch.Tensor, teachers: TeacherBatch,
                 weights: torch.Tensor | None = None) -> MethodOutput:
        target, row_weight = self.integrate(teachers)
        loss = kl_distill(student_logits, target, self.temperature,
                          row_weights(teachers.valid.any(1), weights) * row_weight)
        return MethodOutput(loss, self.certainty_metrics(teachers))

    def certainty(self, teachers: TeacherBatch) -> torch.Tensor:
        """[B, K] c_k = 1 − H(p)/log|Y_k| from the cached MC-dropout entropy. Without it, falls
        back to the entropy of the teacher's own softmax at T over its covered classes (the
        paper's "no_mc" ablation). Invalid entries are 0."""
        if is_scores(teachers):
            raise ValueError(f"method {self.name} needs class logits; these teachers give scores")
        if teachers.mc_entropy is not None:
            entropy = teachers.mc_entropy
        else:
            probs = teacher_probs(teachers, self.temperature)
            classes = teachers.covered.sum(1).to(probs.dtype)
            entropy = -torch.xlogy(probs, probs).sum(-1) / classes.log().clamp_min(1e-12)
        return torch.where(teachers.valid, 1.0 - entropy, 0.0)

    def integrate(self, teachers: TeacherBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, C] target q, [B] margin weight, 1 when `margin_weight` is off)."""
        ranked = self.ranked(teachers)
        if self.mode == "soft":
            mix = torch.softmax(ranked / self.tau, dim=1)
        else:
            mix = F.one_hot(ranked.argmax(1), teachers.num_teachers).to(ranked.dtype)
        mix = torch.where(teachers.valid, mix, 0.0)        # rows with no valid teacher: all 0
        target = (mix[:, :, None] * teacher_probs(teachers, self.temperature)).sum(1)
        if not self.margin_weight:
            return target, torch.ones_like(ranked[:, 0])
        return target, self.margin(ranked, teachers.valid)

    def ranked(self, teachers: TeacherBatch) -> torch.Tensor:
        """[B, K] certainties (standardised with `normalize="batch"`) with invalid teachers at
        −inf, so they never win or weigh."""
        certainty = self.certainty(teachers)
        if self.normalize == "batch":
            certainty = standardise(certainty, teachers.valid)
        return certainty.masked_fill(~teachers.valid, -math.inf)

    @staticmethod
    def margin(ranked: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """[B] gap between the two highest certainties (+MARGIN_EPS); 1 where a row has a single
        valid teacher, which nothing conflicts with."""
        top2 = F.pad(ranked, (0, 1), value=-math.inf).topk(2, dim=1).values
        return torch.where(valid.sum(1) >= 2, top2[:, 0] - top2[:, 1] + MARGIN_EPS, 1.0)

    def certainty_metrics(self, teachers: TeacherBatch) -> dict[str, float]:
        """Mean (raw) certainty per teacher over its valid rows, and the fraction of rows (with a
        valid teacher) on which each teacher is the most certain (after normalisation)."""
        valid = teachers.valid
        certainty = torch.where(valid, self.certainty(teachers), 0.0).sum(0) / valid.sum(0)
        rows = valid.any(1)
        most = F.one_hot(self.ranked(teachers).argmax(1), teachers.num_teachers)[rows].float().mean(0)
        metrics = {f"muka/certainty/{k}": float(c) for k, c in enumerate(certainty)}
        metrics.update({f"muka/most_certain/{k}": float(m) for k, m in enumerate(most)})
        return metrics


def standardise(values: torch.Tensor, valid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[B, K] each column minus its mean over valid rows, divided by its standard deviation
    there (+eps; a column with a single valid row becomes 0)."""
    count = valid.sum(0).clamp_min(1)
    mean = torch.where(valid, values, 0.0).sum(0) / count
    centred = torch.where(valid, values - mean, 0.0)
    std = (centred.square().sum(0) / count).sqrt()
    return centred / (std + eps)
