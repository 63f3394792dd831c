"""Token-level losses for causal-LM students: distillation towards sparse teacher targets, and
cross-entropy on the text itself.

One bucketed KL covers both cache modes. The teacher side is a set of listed ids with
probabilities p_i plus a tail bucket of mass p_tail; the student's distribution q (at the same
temperature) is collapsed onto the same buckets, its tail being 1 - sum of q over the listed ids.
The gradient with respect to a student logit z_j is (at T = 1)

    q_j - p_j                      for a listed id j,
    q_j · (1 - p_tail / q_tail)    for any other id,

so with every id listed (k = vocabulary) it is exactly the dense KL gradient q - p. Sampled
targets list the drawn ids with p = count / N and p_tail = 0: the gradient is q - count / N,
whose expectation over the draws is the dense gradient q - p (an unbiased estimator; its loss
value is the cross-entropy against the draws minus their own entropy, not an unbiased KL).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.pipeline.methods import weighted_mean


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def sparse_kl(student_logits: torch.Tensor, ids: torch.Tensor, probs: torch.Tensor,
              tail: torch.Tensor, temperature: float = 1.0,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(teacher buckets ‖ student buckets) per token, (weighted) mean over tokens.

    student_logits [N, V]; ids [N, S] listed ids (-1 pads); probs [N, S]; tail [N].
    """
    log_q = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    listed = ids >= 0
    log_q_ids = log_q.gather(-1, ids.clamp_min(0)).masked_fill(~listed, float("-inf"))
    per_token = (torch.xlogy(probs, probs) - probs * log_q_ids.masked_fill(~listed, 0.0)).sum(-1)
    has_tail = tail > 0
    # Where the teacher has no tail the student's tail is never needed (and may be log 0).
    inside = torch.where(has_tail, log_q_ids.logsumexp(-1).clamp_max(-1e-7), -1.0)
    tail_term = torch.xlogy(tail, tail) - tail * log1mexp(inside)
    per_token = per_token + torch.where(has_tail, tail_term, 0.0)
    return temperature ** 2 * weighted_mean(per_token, weights)


def next_token_ce(student_logits: torch.Tensor, next_ids: torch.Tensor, has_next: torch.Tensor,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the token that follows each position (positions without one are left
    out), (weighted) mean over the positions that have one."""
    per_token = F.cross_entropy(student_logits.float(), next_ids.clamp_min(0), reduction="none")
    mask = has_next.float() if weights is None else has_next.float() * weights
    return weighted_mean(per_token, mask)
