"""Token-level ensembles on hand-made sparse targets: the union support, mean, GOVERN."""

import pytest
import torch
from torch.testing import assert_close

from distill.pipeline.kinds import make_method
from distill.pipeline.kinds.causal_lm.losses import sparse_kl
from distill.pipeline.kinds.causal_lm.methods.govern import TokenGovern
from distill.pipeline.kinds.causal_lm.methods.mean import TokenMean
from distill.pipeline.kinds.causal_lm.targets import SparseTargets, align

V = 10


def _targets(ids, probs, tail, valid=None):
    ids, probs = torch.tensor(ids), torch.tensor(probs)
    return SparseTargets(ids=ids, probs=probs, tail=torch.tensor(tail),
                         valid=(torch.ones(len(ids), dtype=torch.bool) if valid is None
                                else torch.tensor(valid)),
                         vocab=V)


def test_union_support_spreads_each_top_k_tail_over_ids_it_does_not_list():
    top_k = _targets([[5, 2]], [[0.3, 0.5]], [0.2])            # top-2 list, 0.2 outside
    sampled = _targets([[5, 7]], [[0.75, 0.25]], [0.0])        # 16 draws: 12 x id 5, 4 x id 7
    aligned = align([top_k, sampled])
    assert aligned.ids.tolist() == [[2, 5, 7]]
    # top-k teacher: 0.2 over the 8 ids it does not list -> 0.025 on id 7, 0.175 left in its tail
    assert_close(aligned.probs[0], torch.tensor([[0.5, 0.3, 0.025], [0.0, 0.75, 0.25]]))
    assert_close(aligned.tail[0], torch.tensor([0.175, 0.0]))
    assert_close(aligned.probs.sum(-1) + aligned.tail, torch.ones(1, 2))
    probs, tail, _ = TokenMean().target(torch.zeros(1, V), aligned)
    assert_close(probs, torch.tensor([[0.25, 0.525, 0.1375]]))
    assert_close(tail, torch.tensor([0.0875]))


def test_union_pads_positions_with_fewer_ids_and_ignores_invalid_teachers():
    a = _targets([[1, 2], [3, -1]], [[0.5, 0.5], [1.0, 0.0]], [0.0, 0.0])
    b = _targets([[4, 5], [6, 7]], [[0.5, 0.5], [0.5, 0.5]], [0.0, 0.0], valid=[False, True])
    aligned = align([a, b])
    assert aligned.ids.tolist() == [[1, 2, -1], [3, 6, 7]]
    probs, tail, _ = TokenMean().target(torch.zeros(2, V), aligned)
    assert_close(probs, torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.25, 0.25]]))


def _three_teachers():
    # Same support {1, 2}; teacher 2 is the outlier that puts almost everything elsewhere.
    return [_targets([[1, 2]], [[0.6, 0.3]], [0.1]),
            _targets([[1, 2]], [[0.5, 0.4]], [0.1]),
            _targets([[1, 2]], [[0.05, 0.05]], [0.9])]


def test_govern_outvotes_the_outlier_per_bucket():
    student = torch.zeros(1, V)              # uniform: q = 0.1 on ids 1 and 2, 0.8 outside
    govern = TokenGovern()
    probs, tail, metrics = govern.target(student, align(_three_teachers()))
    # buckets id1, id2, tail: gradients q - p of teachers 0, 1 are (-, -, +); teacher 2 (+, +, -)
    assert_close(probs, torch.tensor([[0.55, 0.35]]))
    assert_close(tail, torch.tensor([0.1]))
    assert metrics == {"govern/agreement/0": 1.0, "govern/agreement/1": 1.0, "govern/agreement/2": 0.0}
    mean_probs, mean_tail, _ = TokenMean().target(student, align(_three_teachers()))
    assert_close(mean_probs, torch.tensor([[0.3833333, 0.25]]))   # the outlier drags the mean


def test_govern_gradient_is_the_kl_step_towards_its_target_and_sums_to_zero():
    student = torch.randn(1, V, generator=torch.Generator().manual_seed(0))
    teachers = [_targets([[1, 2]], [[0.6, 0.3]], [0.1]), _targets([[1, 3]], [[0.2, 0.7]], [0.1]),
                _targets([[2, 3]], [[0.5, 0.1]], [0.4])]
    logits = student.clone().requires_grad_(True)
    TokenGovern()(logits, teachers).loss.backward()
    aligned = align(teachers)
    probs, tail, _ = TokenGovern().target(student, aligned)
    reference = student.clone().requires_grad_(True)
    sparse_kl(reference, aligned.ids, probs, tail).backward()
    assert_close(logits.grad, reference.grad)
    assert abs(logits.grad.sum().item()) < 1e-6           # centred: no drift of all logits
    assert_close(probs.sum(-1) + tail, torch.ones(1))


def test_single_teacher_mean_is_plain_sparse_kd():
    teacher = _targets([[4, 1, 8]], [[0.5, 0.2, 0.1]], [0.2])
    student = torch.randn(1, V)
    loss = TokenMean()(student, [teacher]).loss
    assert_close(loss, sparse_kl(student, teacher.ids, teacher.probs, teacher.tail))


def test_methods_without_a_token_level_form_are_refused_by_name():
    with pytest.raises(ValueError, match="'median' has no form for causal-lm teachers.*govern, mean"):
        make_method("causal-lm", "median")
    with pytest.raises(ValueError, match="unknown options"):
        make_method("causal-lm", "mean", teacher=1)
