"""Token-level ensembles of causal-LM teachers that share a tokenizer (docs/causal-lm.md).

Every method puts the teachers on the union of their sparse supports (plus one tail bucket for
the rest of the vocabulary: `lm_targets.align`), builds one target per token there and trains
the student with the bucketed KL of `lm_losses.sparse_kl`. Only `mean` and `govern` have a
token-level form here; the classification-only methods are refused by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from distill.pipeline.lm_losses import sparse_kl
from distill.pipeline.lm_targets import Aligned, SparseTargets, align
from distill.pipeline.methods.base import MethodOutput, masked_mean


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


class TokenMean(TokenMethod):
    """The mean of the teachers' distributions (each reconstructed from its sparse targets) over
    the teachers valid at the token. With sampled teachers the mean of the draws' frequencies
    is still an unbiased estimate of the mean distribution."""

    name = "mean"

    def target(self, student_logits, aligned: Aligned):
        valid = aligned.valid[:, :, None].expand_as(aligned.probs)
        return masked_mean(aligned.probs, valid), masked_mean(aligned.tail, aligned.valid), {}


class TokenGovern(TokenMethod):
    """GOVERN per token on the union support: each teacher's gradient on every bucket (listed
    union ids and the tail), q_b - p_kb, votes with its sign; each bucket takes the mean
    teacher probability of the majority side (ties: all valid teachers). The result is
    renormalised to sum to 1, which centres the combined gradient q - p* (it sums to zero over
    the vocabulary, as design section 5 requires) and keeps the loss a KL worth logging.
    Logs each teacher's agreement rate over the buckets it voted on."""

    name = "govern"

    def target(self, student_logits, aligned: Aligned):
        t = self.temperature
        log_q = torch.log_softmax(student_logits.float() / t, -1)
        q = log_q.gather(-1, aligned.ids.clamp_min(0)).exp() * (aligned.ids >= 0)
        q_buckets = torch.cat([q, (1 - q.sum(-1, keepdim=True)).clamp_min(0)], -1)      # [N, U+1]
        p = torch.cat([aligned.probs, aligned.tail[:, :, None]], -1)                     # [N, K, U+1]
        real = torch.cat([aligned.ids >= 0, torch.ones_like(aligned.ids[:, :1], dtype=torch.bool)], -1)
        voters = aligned.valid[:, :, None] & real[:, None, :]
        votes = torch.where(voters, (q_buckets[:, None] - p).sign(), 0.0)
        majority = votes.sum(1).sign()
        agree = voters & ((votes == majority[:, None]) | (majority == 0)[:, None])
        chosen = masked_mean(p, agree)
        chosen = chosen / chosen.sum(-1, keepdim=True).clamp_min(1e-12)
        agreed = (voters & (votes == majority[:, None])).sum((0, 2)).float()
        rates = agreed / voters.sum((0, 2)).clamp_min(1)
        metrics = {f"govern/agreement/{k}": float(r) for k, r in enumerate(rates)}
        return chosen[:, :-1], chosen[:, -1], metrics


TOKEN_METHODS: dict[str, type[TokenMethod]] = {m.name: m for m in (TokenMean, TokenGovern)}


def make_token_method(name: str, temperature: float = 1.0, **options) -> TokenMethod:
    if name not in TOKEN_METHODS:
        raise ValueError(f"method {name!r} has no token-level form for causal-LM teachers; "
                         f"use one of: {', '.join(sorted(TOKEN_METHODS))}")
    return TOKEN_METHODS[name](temperature=temperature, **options)
