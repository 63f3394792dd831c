"""The one interface every label-free ensemble method implements (docs/methods.md).

A method gets the live student logits and the cached teacher payloads of a batch, already
mapped into the student's label space, and returns the loss to back-propagate plus what to log.
Methods that define a gradient rather than a target (GOVERN) return a surrogate loss whose
gradient with respect to the student logits is exactly that gradient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from distill.pipeline.kinds.classification.losses import SCORE_LOSSES, distill_loss, score_loss
from distill.pipeline.methods import MethodOutput


@dataclass
class TeacherBatch:
    """Cached teacher outputs for B rows and K teachers, in the student's C-class label space.

    logits:   [B, K, C] raw (calibrated) teacher logits; classes a teacher does not cover hold 0.
    covered:  [K, C] bool, which student classes teacher k predicts (all True without label maps).
    valid:    [B, K] bool, False where a teacher's row was skipped (stored as null).
    mc_probs: [B, K, C] mean MC-dropout probabilities (zero outside `covered`), when cached.
    mc_entropy: [B, K] H(mean MC probs) / log |Y_k|, when cached.
    groups:   [B] long, the query group of each row numbered within the batch, when the corpus
              has groups and batches hold whole groups (the ranking losses need them).
    For single-score teachers (relevance, regression) C == 1 and logits are the scores.
    """

    logits: torch.Tensor
    covered: torch.Tensor
    valid: torch.Tensor
    mc_probs: torch.Tensor | None = None
    mc_entropy: torch.Tensor | None = None
    groups: torch.Tensor | None = None

    @property
    def num_teachers(self) -> int:
        return self.logits.shape[1]


class Method(ABC):
    """Subclasses set `name` and implement `__call__`; `temperature` is the KD temperature;
    `loss` is how single scores are distilled (`train.loss`: SCORE_LOSSES in losses.py)."""

    name: str = ""

    def __init__(self, temperature: float = 1.0, loss: str = "pointwise", **options):
        self.temperature = temperature
        if loss not in SCORE_LOSSES:
            raise ValueError(f"unknown loss {loss!r}; known losses: {', '.join(SCORE_LOSSES)}")
        self.loss = loss
        if options:
            raise ValueError(f"method {self.name}: unknown options {sorted(options)}")

    @abstractmethod
    def __call__(self, student_logits: torch.Tensor, teachers: TeacherBatch,
                 weights: torch.Tensor | None = None) -> MethodOutput:
        """`weights` [B] are optional per-sample weights (e.g. MUKA's margin)."""


# Shared helpers: how methods read a TeacherBatch. Invalid rows may hold NaN, so every helper
# selects with torch.where (never multiplies by a mask) and returns finite values.

def is_scores(teachers: TeacherBatch) -> bool:
    """Single-score teachers (relevance, regression) have one output, C == 1."""
    return teachers.logits.shape[-1] == 1


def members(teachers: TeacherBatch) -> torch.Tensor:
    """[B, K, C] bool: the entries that carry information (the teacher's row is valid and it covers
    the class); only these vote, average or take medians."""
    return teachers.valid[:, :, None] & teachers.covered[None]


def teacher_probs(teachers: TeacherBatch, temperature: float) -> torch.Tensor:
    """[B, K, C] each teacher's softmax at `temperature` over the classes it covers, zero-padded to
    C (a teacher says nothing about classes it never saw); rows of invalid teachers are all 0."""
    valid = teachers.valid[:, :, None]
    logits = torch.where(valid, teachers.logits, 0.0).masked_fill(~teachers.covered, float("-inf"))
    return torch.where(valid, torch.softmax(logits / temperature, dim=-1), 0.0)


def teacher_values(teachers: TeacherBatch, temperature: float) -> torch.Tensor:
    """[B, K, C] what each teacher says per student coordinate: its score (C == 1, 0 where invalid)
    or its probabilities at `temperature`."""
    if is_scores(teachers):
        return torch.where(teachers.valid[:, :, None], teachers.logits, 0.0)
    return teacher_probs(teachers, temperature)


def masked_median(values: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Median over the entries where `mask` holds (the mean of the two middle ones for an even
    count, so two teachers give their midpoint rather than the lower one), 0 where none does."""
    return torch.nanquantile(torch.where(mask, values, float("nan")), 0.5, dim=dim).nan_to_num(0.0)


def renormalise(probs: torch.Tensor) -> torch.Tensor:
    """Scale each row to sum to 1 (all-zero rows stay 0)."""
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)


def row_weights(has_target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """[B] per-sample loss weights: 0 for rows without a usable teacher, times incoming weights."""
    rows = has_target.float()
    return rows if weights is None else rows * weights


class TargetMethod(Method):
    """A method that builds one target per row from the teachers and distils towards it (KL at the
    temperature for classes, MSE for scores). Subclasses only say how the target is built."""

    @abstractmethod
    def target(self, teachers: TeacherBatch) -> torch.Tensor:
        """[B, C] target probabilities (C >= 2) or scores (C == 1)."""

    def has_target(self, teachers: TeacherBatch) -> torch.Tensor:
        """[B] bool, rows the target is defined for: by default those with any valid teacher."""
        return teachers.valid.any(1)

    def __call__(self, student_logits: torch.Tensor, teachers: TeacherBatch,
                 weights: torch.Tensor | None = None) -> MethodOutput:
        rows = row_weights(self.has_target(teachers), weights)
        if is_scores(teachers):
            return MethodOutput(score_loss(self.loss, student_logits, self.target(teachers),
                                           self.temperature, teachers.groups, rows))
        return MethodOutput(distill_loss(student_logits, self.target(teachers), self.temperature, rows))
