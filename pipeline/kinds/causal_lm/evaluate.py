"""Evaluate a causal-LM student against its cached teachers, without loading them: KL to the
teachers' mean distribution, top-1 agreement, and perplexity next to the teachers'.

The KL is measured on the teachers' sparse supports (listed ids plus a tail bucket), which is a
lower bound of the full-vocabulary KL for top-k caches (merging outcomes never increases a KL)
and a noisy estimate for sampled caches. Teacher perplexity uses the log-probability each
teacher cached for the token that actually follows, so it is exact; several teachers count as
their mixture (the mean of their probabilities).
"""

from __future__ import annotations

import math

import torch

from distill.pipeline.kinds.causal_lm.losses import next_token_ce, sparse_kl
from distill.pipeline.kinds.causal_lm.methods.mean import TokenMean
from distill.pipeline.kinds.causal_lm.stream import TokenBatch, TokenStream
from distill.pipeline.kinds.causal_lm.targets import align

EVAL_TOKENS = 16384


def student_logits(model, batch: TokenBatch) -> torch.Tensor:
    """[N, V] the student's logits at the batch's real tokens over the teachers' vocabulary: the
    rows a padded output head has beyond it are cut off, so the student's distribution (and its
    training) is over real tokens only. A packed batch runs as its blocks, with no attention
    mask: transformers builds the block-diagonal causal mask from the restarting positions."""
    if batch.packed is not None:
        packed = batch.packed
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                       use_cache=False).logits.flatten(0, 1)[packed.index]
    else:
        mask = batch.attention_mask.bool()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       use_cache=False).logits[mask]
    return logits[:, :batch.teachers[0].vocab].float()


@torch.inference_mode()
def evaluate_lm(model, stream: TokenStream, temperature: float, max_tokens: int = EVAL_TOKENS) -> dict:
    """Over the first `max_tokens` tokens of `stream` (epoch 0, in its order)."""
    device = next(model.parameters()).device
    mean = TokenMean(temperature)
    kl = agree = tokens = nll = teacher_nll = next_tokens = 0.0
    for batch in stream.epoch(0):
        batch = batch.to(device)
        logits = student_logits(model, batch)
        aligned = align(batch.teachers)
        probs, tail, _ = mean.target(logits, aligned)
        covered = aligned.valid.any(1)
        n = int(covered.sum())
        kl += float(sparse_kl(logits, aligned.ids, probs, tail, temperature, covered.float())) \
            / temperature ** 2 * n
        top = aligned.ids.gather(-1, probs.argmax(-1, keepdim=True))[:, 0]
        agree += float(((logits.argmax(-1) == top) & covered).sum())
        tokens += n
        has_next = batch.has_next & covered
        count = int(has_next.sum())
        nll += float(next_token_ce(logits, batch.next_ids, has_next)) * count
        valid = torch.stack([t.valid for t in batch.teachers], 1)
        mixture = (batch.next_logprob.masked_fill(~valid, float("-inf")).logsumexp(1)
                   - valid.sum(1).clamp_min(1).log())
        teacher_nll -= float(mixture[has_next].sum())
        next_tokens += count
        if tokens >= max_tokens:
            break
    student_ppl = math.exp(nll / max(next_tokens, 1))
    teacher_ppl = math.exp(teacher_nll / max(next_tokens, 1))
    return {"kl_to_teacher": kl / max(tokens, 1), "top1_agreement": agree / max(tokens, 1),
            "student_perplexity": student_ppl, "teacher_perplexity": teacher_ppl,
            "perplexity_ratio": student_ppl / teacher_ppl, "eval_tokens": int(tokens)}
