"""`govern` per token: GOVERN's vote on every bucket of the union support."""

from __future__ import annotations

import torch

from distill.pipeline.kinds.causal_lm.methods.base import TokenMethod
from distill.pipeline.kinds.causal_lm.targets import Aligned
from distill.pipeline.methods import masked_mean


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
