"""Every ensemble rule on hand-made tensors (docs/methods.md)."""

import math

import pytest
import torch
from torch.testing import assert_close

from distill.pipeline import kinds
from distill.pipeline.kinds.classification.losses import kl_distill, mse_scores
from distill.pipeline.kinds.classification.methods.base import TeacherBatch
from distill.pipeline.kinds.classification.methods.muka import standardise

NAN = float("nan")
REGISTRY = kinds.methods("classification")


def make_method(name: str, **options):
    return kinds.make_method("classification", name, **options)



def classes(probs, valid=None, covered=None, mc_entropy=None) -> TeacherBatch:
    """Teachers whose softmax at T=1 is `probs` [B, K, C]; uncovered classes hold logit 0."""
    probs = torch.tensor(probs)
    covered = (torch.ones(probs.shape[1:], dtype=torch.bool) if covered is None
               else torch.tensor(covered))
    logits = torch.where(covered, probs.clamp_min(1e-30).log(), 0.0)
    valid = torch.ones(probs.shape[:2], dtype=torch.bool) if valid is None else torch.tensor(valid)
    entropy = None if mc_entropy is None else torch.tensor(mc_entropy)
    return TeacherBatch(logits, covered, valid, mc_entropy=entropy)


def scores(values, valid=None) -> TeacherBatch:
    """Single-score teachers: `values` [B, K]."""
    logits = torch.tensor(values).unsqueeze(-1)
    valid = torch.ones(logits.shape[:2], dtype=torch.bool) if valid is None else torch.tensor(valid)
    return TeacherBatch(logits, torch.ones(logits.shape[1], 1, dtype=torch.bool), valid)


def loss_and_grad(method, student, teachers):
    student = student.clone().requires_grad_(True)
    out = method(student, teachers)
    out.loss.backward()
    return out, student.grad


SPREAD = [[[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]]]        # 1 row, 3 teachers


# --- registry ------------------------------------------------------------------

def test_registry_names():
    assert sorted(REGISTRY) == ["govern", "max-confidence", "mean", "median", "muka", "single"]


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown method 'nope'; known methods: govern, "
                                         r"max-confidence, mean, median, muka, single"):
        make_method("nope")


def test_unknown_or_bad_options_are_rejected():
    with pytest.raises(ValueError, match="unknown options"):
        make_method("mean", temperature=2.0, tau=0.1)
    with pytest.raises(ValueError, match="mode"):
        make_method("muka", mode="average")
    with pytest.raises(ValueError, match="teacher"):
        make_method("single", teacher=-1)


# --- mean, median, max-confidence, single --------------------------------------

def test_mean_and_median_targets_by_hand():
    teachers = classes(SPREAD)
    assert_close(make_method("mean").target(teachers), torch.tensor([[1 / 3, 11 / 30, 0.3]]))
    # medians [0.2, 0.2, 0.1] sum to 0.5 and are renormalised
    assert_close(make_method("median").target(teachers), torch.tensor([[0.4, 0.4, 0.2]]))


def test_median_of_two_teachers_is_their_midpoint():
    teachers = classes([[[0.8, 0.2], [0.4, 0.6]]])
    assert_close(make_method("median").target(teachers), torch.tensor([[0.6, 0.4]]))


def test_mean_only_averages_teachers_covering_the_class():
    teachers = classes([[[0.6, 0.4, 0.0], [0.0, 0.5, 0.5]]],
                       covered=[[True, True, False], [False, True, True]])
    assert_close(make_method("mean").target(teachers), torch.tensor([[0.6, 0.45, 0.5]]) / 1.55)


def test_target_methods_use_temperature_and_kl():
    teachers = classes(SPREAD)
    teachers.logits = teachers.logits * 2            # softmax at T=2 is again SPREAD
    student = torch.tensor([[0.5, -1.0, 2.0]])
    loss = make_method("mean", temperature=2.0)(student, teachers).loss
    assert_close(loss, kl_distill(student, torch.tensor([[1 / 3, 11 / 30, 0.3]]), 2.0))


def test_mean_and_median_of_scores_use_mse():
    teachers = scores([[1.0, 2.0, 6.0]])
    student = torch.tensor([[0.0]])
    assert_close(make_method("mean")(student, teachers).loss,
                 mse_scores(student, torch.tensor([3.0])))
    assert_close(make_method("median").target(teachers), torch.tensor([[2.0]]))


def test_max_confidence_picks_the_surest_teacher_per_row():
    teachers = classes([[[0.7, 0.3], [0.1, 0.9]], [[0.8, 0.2], [0.4, 0.6]]])
    method = make_method("max-confidence")
    assert_close(method.target(teachers), torch.tensor([[0.1, 0.9], [0.8, 0.2]]))
    assert_close(method.target(scores([[0.5, -2.0, 1.0]])), torch.tensor([[-2.0]]))


def test_max_confidence_ignores_an_invalid_confident_teacher():
    teachers = classes([[[0.7, 0.3], [0.01, 0.99]]], valid=[[True, False]])
    assert_close(make_method("max-confidence").target(teachers), torch.tensor([[0.7, 0.3]]))


def test_single_teacher_distils_one_teacher_and_skips_its_invalid_rows():
    teachers = classes([[[0.7, 0.3], [0.1, 0.9]], [[0.8, 0.2], [0.4, 0.6]]],
                       valid=[[True, True], [True, False]])
    student = torch.zeros(2, 2)
    method = make_method("single", teacher=1)
    assert_close(method.target(teachers)[0], torch.tensor([0.1, 0.9]))
    assert_close(method(student, teachers).loss,
                 kl_distill(student[:1], torch.tensor([[0.1, 0.9]]), 1.0))


# --- GOVERN ----------------------------------------------------------------------

def test_govern_scalar_scores_follow_the_papers_rule():
    # row 0: s=0, t=[1, 2, -5]: g signs (−, −, +), majority −, target mean(1, 2) -> g = −1.5
    # row 1: s=4, all teachers below: g = 4 − mean(1, 2, −5)
    teachers = scores([[1.0, 2.0, -5.0], [1.0, 2.0, -5.0]])
    out, grad = loss_and_grad(make_method("govern"), torch.tensor([[0.0], [4.0]]), teachers)
    assert_close(grad, torch.tensor([[-1.5], [4 + 2 / 3]]) / 2)
    assert_close(out.metrics["govern/agreement/2"], 0.5)
    assert_close(out.metrics["govern/agreement/0"], 1.0)
    assert_close(out.metrics["govern/median_distance"], (1 + 3) / 2)   # median 1: |0−1|, |4−1|


@pytest.mark.parametrize("values, expected", [([1.0, -3.0], 1.0), ([1.0, 2.0, -1.0, -3.0], 0.25)])
def test_govern_tie_with_even_teachers_uses_all_of_them(values, expected):
    _, grad = loss_and_grad(make_method("govern"), torch.tensor([[0.0]]), scores([values]))
    assert_close(grad, torch.tensor([[expected]]))


OUTLIER = [[[0.5, 0.3, 0.2], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]]]     # teacher 2 is the outlier


def test_govern_outvotes_an_outlier_and_centres_the_gradient():
    # p_s = 1/3 each. Class 0: teacher 2 dissents -> 1/3 − mean(0.5, 0.6); class 1: all agree ->
    # 1/3 − 0.2; class 2: teacher 2 dissents -> 1/3 − 0.2. Then subtract the class mean (1/60).
    out, grad = loss_and_grad(make_method("govern"), torch.zeros(1, 3), classes(OUTLIER))
    expected = torch.tensor([[1 / 3 - 0.55, 1 / 3 - 0.2, 1 / 3 - 0.2]]) - 1 / 60
    assert_close(grad, expected)
    assert_close(grad.sum(-1), torch.zeros(1))
    rates = [out.metrics[f"govern/agreement/{k}"] for k in range(3)]
    assert_close(rates, [1.0, 1.0, 1 / 3])
    assert min(range(3), key=rates.__getitem__) == 2


def test_govern_gradient_scales_with_temperature_and_is_the_surrogate_gradient():
    teachers = classes(OUTLIER * 2)
    teachers.logits = teachers.logits * 2                # softmax at T=2 is again OUTLIER
    student = torch.zeros(2, 3)
    out, grad = loss_and_grad(make_method("govern", temperature=2.0), student, teachers)
    one = torch.tensor([1 / 3 - 0.55, 1 / 3 - 0.2, 1 / 3 - 0.2]) - 1 / 60
    assert_close(grad, 2 * one.expand(2, 3) / 2)         # T · g per row, over B = 2
    assert_close(out.loss, (student * grad).sum())       # linear surrogate: loss = <s, grad>


def test_govern_logs_distance_to_the_median_target():
    out = make_method("govern")(torch.zeros(1, 3), classes(SPREAD))
    # median target [0.4, 0.4, 0.2] against p_s = 1/3 each
    assert_close(out.metrics["govern/median_distance"], (1 / 15 + 1 / 15 + 2 / 15) / 3)


# --- MUKA ------------------------------------------------------------------------

DISJOINT = dict(probs=[[[0.8, 0.2, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]],
                covered=[[True, True, False, False], [False, False, True, True]],
                mc_entropy=[[0.3, 0.9]])                 # certainty 0.7 and 0.1


def test_muka_soft_targets_are_zero_padded_and_weighted_by_softmax_of_certainty():
    target, weight = make_method("muka", normalize="none").integrate(classes(**DISJOINT))
    w = torch.softmax(torch.tensor([0.7, 0.1]) / 0.2, 0)
    assert_close(w[0], torch.tensor(1 / (1 + math.exp(-3.0))))
    assert_close(target, torch.tensor([[0.8 * w[0], 0.2 * w[0], 0.5 * w[1], 0.5 * w[1]]]))
    assert_close(target.sum(-1), torch.ones(1))
    assert_close(weight, torch.tensor([0.6 + 1e-6]))


def test_muka_hard_mode_takes_the_most_certain_teacher():
    target, _ = make_method("muka", mode="hard", normalize="none").integrate(classes(**DISJOINT))
    assert torch.equal(target, torch.tensor([[0.8, 0.2, 0.0, 0.0]]))


def test_muka_margin_is_the_gap_between_the_two_highest_certainties():
    teachers = classes([[[0.5, 0.5]] * 3] * 2, mc_entropy=[[0.1, 0.5, 0.3]] * 2,
                       valid=[[True, True, True], [True, False, False]])
    _, weight = make_method("muka", normalize="none").integrate(teachers)
    assert_close(weight, torch.tensor([0.2 + 1e-6, 1.0]))          # one valid teacher: weight 1
    _, off = make_method("muka", normalize="none", margin_weight=False).integrate(teachers)
    assert_close(off, torch.ones(2))


def test_muka_loss_is_margin_weighted_kl():
    teachers = classes([[[0.9, 0.1], [0.4, 0.6]], [[0.3, 0.7], [0.5, 0.5]]],
                       mc_entropy=[[0.2, 0.6], [0.5, 0.4]])
    student = torch.tensor([[0.2, -0.1], [1.0, 0.0]])
    method = make_method("muka", mode="hard", normalize="none")
    out = method(student, teachers, weights=torch.tensor([1.0, 2.0]))
    expected = kl_distill(student, torch.tensor([[0.9, 0.1], [0.5, 0.5]]), 1.0,
                          torch.tensor([0.4 + 1e-6, 2 * (0.1 + 1e-6)]))
    assert_close(out.loss, expected)
    assert_close([out.metrics[f"muka/certainty/{k}"] for k in range(2)], [0.65, 0.5])
    assert_close([out.metrics[f"muka/most_certain/{k}"] for k in range(2)], [0.5, 0.5])


def test_muka_standardises_each_teachers_certainty_over_the_batch():
    """Teacher 0 is more certain than teacher 1 on every row (badly calibrated); relative to its
    own usual certainty, teacher 1 stands out on rows 1 and 2, so it owns them."""
    teachers = classes([[[0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.3, 0.7]]] * 3,
                       covered=[[True, True, False, False], [False, False, True, True]],
                       mc_entropy=[[0.1, 0.9], [0.2, 0.4], [0.3, 0.8]])  # certainty 0.9/0.1, 0.8/0.6, 0.7/0.2
    raw, _ = make_method("muka", mode="hard", normalize="none").integrate(teachers)
    assert torch.equal(raw.argmax(1), torch.tensor([0, 0, 0]))
    hard, weight = make_method("muka", mode="hard").integrate(teachers)
    assert torch.equal(hard.argmax(1), torch.tensor([0, 3, 3]))
    z0 = torch.tensor([1.0, 0.0, -1.0]) * (1.5 ** 0.5)                    # (0.9, 0.8, 0.7)
    z1 = torch.tensor([-0.2, 0.3, -0.1]) / (0.14 / 3) ** 0.5             # (0.1, 0.6, 0.2)
    assert_close(weight, (z0 - z1).abs() + 1e-6, rtol=1e-4, atol=1e-4)
    soft, _ = make_method("muka").integrate(teachers)
    w = torch.softmax(torch.stack([z0, z1], 1) / 0.2, 1)
    assert_close(soft[:, :2].sum(1), w[:, 0], rtol=1e-4, atol=1e-4)


def test_muka_standardisation_leaves_out_invalid_rows():
    values = torch.tensor([[0.9, 0.1], [0.7, 5.0], [0.8, 0.3]])
    valid = torch.tensor([[True, True], [True, False], [True, True]])
    z = standardise(values, valid)
    assert_close(z[:, 0], torch.tensor([1.0, -1.0, 0.0]) * 1.5 ** 0.5, rtol=1e-5, atol=1e-5)
    assert_close(z[[0, 2], 1], torch.tensor([-1.0, 1.0]), rtol=1e-4, atol=1e-4)
    assert z[1, 1] == 0
    alone = standardise(torch.tensor([[0.4, 0.2]]), torch.tensor([[True, False]]))
    assert torch.equal(alone, torch.zeros(1, 2))                         # nothing to compare with
    with pytest.raises(ValueError, match="normalize must be 'batch' or 'none'"):
        make_method("muka", normalize="pool")


def test_muka_without_mc_entropy_uses_the_teachers_own_normalised_entropy():
    teachers = classes([[[0.5, 0.5, 0.0], [0.0, 0.9, 0.1]]],
                       covered=[[True, True, False], [False, True, True]])
    certainty = make_method("muka").certainty(teachers)
    assert_close(certainty, torch.tensor([[0.0, 0.5310044064107188]]))


def test_muka_rejects_scores():
    with pytest.raises(ValueError, match="class logits"):
        make_method("muka")(torch.zeros(1, 1), scores([[1.0, 2.0]]))


# --- every method: invalid teachers and rows are ignored --------------------------

def _random_batch(rows: int, generator: torch.Generator) -> TeacherBatch:
    return TeacherBatch(torch.randn(rows, 3, 4, generator=generator),
                        torch.ones(3, 4, dtype=torch.bool), torch.ones(rows, 3, dtype=torch.bool),
                        mc_entropy=torch.rand(rows, 3, generator=generator))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_invalid_teachers_are_ignored(name):
    generator = torch.Generator().manual_seed(0)
    base = _random_batch(5, generator)
    student = torch.randn(5, 4, generator=generator)
    junk = TeacherBatch(torch.cat([base.logits, torch.full((5, 1, 4), NAN)], 1),
                        torch.ones(4, 4, dtype=torch.bool),
                        torch.cat([base.valid, torch.zeros(5, 1, dtype=torch.bool)], 1),
                        mc_entropy=torch.cat([base.mc_entropy, torch.full((5, 1), NAN)], 1))
    method = make_method(name, temperature=2.0)
    out, grad = loss_and_grad(method, student, base)
    out_junk, grad_junk = loss_and_grad(method, student, junk)
    assert_close(out_junk.loss, out.loss)
    assert_close(grad_junk, grad)
    for key, value in out.metrics.items():
        assert_close(out_junk.metrics[key], value)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_rows_without_a_valid_teacher_contribute_nothing(name):
    generator = torch.Generator().manual_seed(1)
    base = _random_batch(3, generator)
    student = torch.randn(4, 4, generator=generator)
    padded = TeacherBatch(torch.cat([base.logits, torch.full((1, 3, 4), NAN)]), base.covered,
                          torch.cat([base.valid, torch.zeros(1, 3, dtype=torch.bool)]),
                          mc_entropy=torch.cat([base.mc_entropy, torch.full((1, 3), NAN)]))
    method = make_method(name)
    out, grad = loss_and_grad(method, student[:3], base)
    out_padded, grad_padded = loss_and_grad(method, student, padded)
    assert_close(out_padded.loss, out.loss)
    assert_close(grad_padded, torch.cat([grad, torch.zeros(1, 4)]))


def test_invalid_score_teacher_neither_votes_nor_averages():
    # valid, teacher 2 would break the tie; invalid, the two valid teachers tie and are averaged
    teachers = scores([[1.0, -3.0, 5.0]], valid=[[True, True, False]])
    out, grad = loss_and_grad(make_method("govern"), torch.tensor([[0.0]]), teachers)
    assert_close(grad, torch.tensor([[1.0]]))                      # tie of the two valid ones
    assert math.isnan(out.metrics["govern/agreement/2"])
