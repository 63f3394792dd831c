"""Distillation losses and per-teacher calibration, on hand-computed values."""

import math

import pytest
import torch
from torch.testing import assert_close

from distill.pipeline.calibration import fit_affine, fit_temperature
from distill.pipeline.kinds.classification.losses import (
    distill_loss,
    kl_distill,
    mse_scores,
    soft_targets,
)
from distill.pipeline.methods import weighted_mean

LOG2 = math.log(2.0)


def test_kl_is_zero_when_student_matches_target():
    student = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    for t in (1.0, 2.0, 4.0):
        assert_close(kl_distill(student, soft_targets(student, t), t), torch.tensor(0.0))


def test_kl_hand_value_and_temperature_squared():
    uniform = torch.zeros(1, 2)
    onehot = torch.tensor([[1.0, 0.0]])
    assert_close(kl_distill(uniform, onehot, 1.0), torch.tensor(LOG2))
    assert_close(kl_distill(uniform, onehot, 2.0), torch.tensor(4 * LOG2))   # same p_s, times T²
    student, target = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.2, 0.5, 0.3]])
    assert_close(kl_distill(3 * student, target, 3.0), 9 * kl_distill(student, target, 1.0))


def test_kl_zero_target_mass_contributes_nothing():
    student = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert_close(kl_distill(student, torch.tensor([[1.0, 0.0, 0.0]]), 1.0), torch.tensor(LOG2))


def test_kl_weighted_mean_over_rows():
    student = torch.zeros(2, 2)
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])          # per-row KL: log 2, 0
    assert_close(kl_distill(student, target, 1.0), torch.tensor(LOG2 / 2))
    assert_close(kl_distill(student, target, 1.0, torch.tensor([1.0, 3.0])), torch.tensor(LOG2 / 4))
    assert_close(kl_distill(student, target, 1.0, torch.tensor([0.0, 2.0])), torch.tensor(0.0))


def test_weighted_mean_with_all_zero_weights_is_zero():
    assert_close(weighted_mean(torch.tensor([1.0, 2.0]), torch.zeros(2)), torch.tensor(0.0))


def test_mse_scores_is_half_squared_error_with_gradient_s_minus_t():
    student = torch.tensor([[1.0], [3.0]], requires_grad=True)
    target = torch.tensor([0.0, 0.0])
    loss = mse_scores(student, target)
    assert_close(loss, torch.tensor(2.5))
    loss.backward()
    assert_close(student.grad, torch.tensor([[0.5], [1.5]]))            # (s − t) / B
    assert_close(mse_scores(student, target, torch.tensor([0.0, 1.0])), torch.tensor(4.5))


def test_soft_targets_softmax_at_temperature_and_sigmoid_for_one_logit():
    assert_close(soft_targets(torch.tensor([[2 * math.log(3.0), 0.0]]), 2.0),
                 torch.tensor([[0.75, 0.25]]))
    assert_close(soft_targets(torch.tensor([[0.0], [2 * math.log(3.0)]]), 2.0),
                 torch.tensor([[0.5], [0.75]]))


def test_distill_loss_picks_kl_for_classes_and_mse_for_scores():
    assert_close(distill_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), 2.0),
                 torch.tensor(4 * LOG2))
    assert_close(distill_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), 2.0), torch.tensor(2.0))


def test_fit_temperature_matches_the_closed_form():
    # All rows [4, 0], 3 of 4 labelled 0: the NLL is minimal where sigmoid(4 / T) = 3/4.
    logits = torch.tensor([[4.0, 0.0]]).repeat(4, 1)
    temperature = fit_temperature(logits, torch.tensor([0, 0, 0, 1]))
    assert temperature == pytest.approx(4 / math.log(3.0), rel=1e-4)


def test_fit_affine_recovers_scale_and_bias():
    scores = torch.tensor([-1.0, 0.0, 2.0, 5.0])
    scale, bias = fit_affine(scores, 2 * scores + 1)
    assert (scale, bias) == (pytest.approx(2.0), pytest.approx(1.0))
