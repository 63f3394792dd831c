"""`mean` per token: the mean of the teachers' distributions."""

from __future__ import annotations

from distill.pipeline.kinds.causal_lm.methods.base import TokenMethod
from distill.pipeline.kinds.causal_lm.targets import Aligned
from distill.pipeline.methods import masked_mean


class TokenMean(TokenMethod):
    """The mean of the teachers' distributions (each reconstructed from its sparse targets) over
    the teachers valid at the token. With sampled teachers the mean of the draws' frequencies
    is still an unbiased estimate of the mean distribution."""

    name = "mean"

    def target(self, student_logits, aligned: Aligned):
        valid = aligned.valid[:, :, None].expand_as(aligned.probs)
        return masked_mean(aligned.probs, valid), masked_mean(aligned.tail, aligned.valid), {}
