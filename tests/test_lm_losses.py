"""Token-level losses on hand-made tensors: the bucketed KL is the dense KL when nothing is left
out, the sampled estimator is unbiased, and the text cross-entropy skips last tokens."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from distill.pipeline.kinds.causal_lm.losses import log1mexp, next_token_ce, sparse_kl

V = 12


def _dense_kl(student_logits, teacher_probs, temperature=1.0):
    log_q = torch.log_softmax(student_logits / temperature, -1)
    per_token = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_q).sum(-1)
    return temperature ** 2 * per_token.mean()


def _grad(loss_fn, logits):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits)
    loss.backward()
    return loss.detach(), logits.grad


def _teacher(n=5, seed=0, sharpness=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, V, generator=g) * sharpness, -1), \
        torch.randn(n, V, generator=torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_with_k_equal_to_vocabulary_is_the_dense_loss_and_gradient(temperature):
    p, student = _teacher()
    ids = p.argsort(-1, descending=True)                         # every id listed, as top-k would
    probs = p.gather(-1, ids)
    tail = torch.zeros(len(p))                                   # exp(-inf): nothing outside
    loss, grad = _grad(lambda z: sparse_kl(z, ids, probs, tail, temperature), student)
    dense_loss, dense_grad = _grad(lambda z: _dense_kl(z, p, temperature), student)
    assert_close(loss, dense_loss, rtol=1e-5, atol=1e-6)
    assert_close(grad, dense_grad, rtol=1e-5, atol=1e-7)
    # ... and the dense KL is the library's too
    library = F.kl_div(torch.log_softmax(student / temperature, -1), p, reduction="batchmean")
    assert_close(dense_loss, temperature ** 2 * library, rtol=1e-5, atol=1e-6)


def test_tail_bucket_by_hand():
    # V = 3, k = 1: the teacher keeps id 0 at 0.5 and 0.5 outside; the student is (0.2, 0.3, 0.5).
    q = torch.tensor([[0.2, 0.3, 0.5]])
    loss = sparse_kl(q.log(), torch.tensor([[0]]), torch.tensor([[0.5]]), torch.tensor([0.5]))
    expected = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # Gradient: q - p on the listed id, q_j (1 - p_tail / q_tail) elsewhere.
    _, grad = _grad(lambda z: sparse_kl(z, torch.tensor([[0]]), torch.tensor([[0.5]]),
                                        torch.tensor([0.5])), q.log())
    assert_close(grad, torch.tensor([[0.2 - 0.5, 0.3 * (1 - 0.5 / 0.8), 0.5 * (1 - 0.5 / 0.8)]]))


def test_padding_slots_and_weights():
    p, student = _teacher(n=2)
    ids = torch.tensor([[3, 7, -1], [1, -1, -1]])
    probs = torch.tensor([[p[0, 3], p[0, 7], 0.0], [p[1, 1], 0.0, 0.0]])
    tail = 1 - probs.sum(-1)
    both = sparse_kl(student, ids, probs, tail, weights=torch.tensor([1.0, 0.0]))
    first = sparse_kl(student[:1], ids[:1, :2], probs[:1, :2], tail[:1])
    assert_close(both, first)


def test_sampled_estimator_is_unbiased_and_top_k_is_not():
    """Averaged over 4,000 independent sets of N = 16 draws, the gradient of the sampled loss
    approaches the dense gradient q - p (stated tolerance 0.01 per coordinate, about 5 standard
    errors); a top-3 list with its tail bucket stays measurably off."""
    p, student = _teacher(n=4, sharpness=1.0)
    draws_n, repeats = 16, 4000
    generator = torch.Generator().manual_seed(0)
    draws = torch.multinomial(p.repeat(repeats, 1), draws_n, replacement=True, generator=generator)
    counts = torch.zeros(len(draws), V).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float))
    listed = counts > 0
    ids = torch.where(listed, torch.arange(V).expand_as(counts), -1)   # unique ids, -1 elsewhere
    probs = counts / draws_n
    logits = student.repeat(repeats, 1)
    _, grad = _grad(lambda z: sparse_kl(z, ids, probs, torch.zeros(len(z))), logits)
    per_token = grad * len(logits)                                   # undo the mean over tokens
    mean_grad = per_token.reshape(repeats, len(p), V).mean(0)
    dense = torch.softmax(student, -1) - p
    assert (mean_grad - dense).abs().max() < 0.01
    top = p.topk(3, -1)
    _, top_grad = _grad(lambda z: sparse_kl(z, top.indices, top.values, 1 - top.values.sum(-1)), student)
    assert (top_grad * len(p) - dense).abs().max() > 0.03


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-8, -0.1, -1.0, -30.0], dtype=torch.float64)
    # Series where the naive formula fails: log(1 - e^x) = log(-x) + x/2 near 0, -e^x far out.
    expected = [math.log(1e-8) - 5e-9, math.log(1 - math.exp(-0.1)), math.log(1 - math.exp(-1.0)),
                -math.exp(-30.0)]
    assert_close(log1mexp(x), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0)


def test_next_token_ce_leaves_out_positions_without_a_next_token():
    logits = torch.randn(4, V)
    next_ids = torch.tensor([5, 2, 0, 7])
    has_next = torch.tensor([True, True, False, True])
    expected = F.cross_entropy(logits[has_next], next_ids[has_next])
    assert_close(next_token_ce(logits, next_ids, has_next), expected)
    weights = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert_close(next_token_ce(logits, next_ids, has_next, weights),
                 F.cross_entropy(logits[[0, 3]], next_ids[[0, 3]]))
