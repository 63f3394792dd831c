"""The interface of token-level ensembles of causal-LM teachers that share a tokenizer
(docs/causal-lm.md).

Every method puts the teachers on the union of their sparse supports (plus one tail bucket for
the rest of the vocabulary: `targets.align`), builds one target per token there and trains the
student with the bucketed KL of `losses.sparse_kl`. A method is one module of this package with
a `TokenMethod` subclass that sets `name`; the classification methods without a token-level form
are refused by name (pipeline/kinds/__init__.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from distill.pipeline.kinds.causal_lm.losses import sparse_kl
from distill.pipeline.kinds.causal_lm.targets import Aligned, SparseTargets, align
from distill.pipeline.methods import MethodOutput


class TokenMethod(ABC):
    name: str = ""

    def __init__(self, temperature: float = 1.0, **options):
        self.temperature = temperature
        if options:
            raise ValueError(f"method {self.name}: unknown options {sorted(options)}")

    def __call__(self, student_logits: torch.Tensor, teachers: list[SparseTargets],
                 weights: torch.Tensor | None = None) -> MethodOutput:
        """student_logits [N, V] at the N real token positions; `weights` [N]."""
        aligned = align(teachers)
        probs, tail, metrics = self.target(student_logits.detach(), aligned)
        covered = aligned.valid.any(1).float()
        weights = covered if weights is None else covered * weights
        loss = sparse_kl(student_logits, aligned.ids, probs, tail, self.temperature, weights)
        return MethodOutput(loss, metrics)

    @abstractmethod
    def target(self, student_logits: torch.Tensor, aligned: Aligned):
        """(probs [N, U], tail [N], metrics): the target on the union support."""
