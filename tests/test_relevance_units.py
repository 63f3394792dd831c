"""Relevance ranking on hand-made values: ranking metrics, pair ids and tokenization, the group
losses, and each ensemble rule under them (docs/relevance.md)."""

import math

import numpy as np
import pytest
import torch

import tiny
from distill.inspection.ranking import ranking_metrics
from distill.pipeline.inputs import encode
from distill.pipeline.kinds import make_method
from distill.pipeline.kinds.classification.losses import (
    listwise_kl,
    margin_mse,
    score_gradient,
    score_loss,
)
from distill.pipeline.kinds.classification.methods.base import TeacherBatch
from distill.storage.ids import sample_id, sample_ids


def score_method(name: str, **options):
    return make_method("classification", name, **options)


def assert_close(a, b, tol=1e-5):
    assert abs(float(a) - float(b)) < tol, (a, b)


# ---- ranking metrics ------------------------------------------------------------------------

def test_mrr_ndcg_and_recall_of_one_group_by_hand():
    # ranked by score: c (rel 0), a (rel 2), d (rel 0), b (rel 1)
    m = ranking_metrics([0.5, 0.1, 0.9, 0.3], [2, 1, 0, 0], ["q"] * 4, recall_at=(1, 2, 4))
    assert_close(m["mrr@10"], 1 / 2)
    dcg = 3 / math.log2(3) + 1 / math.log2(5)       # gains 2^2-1 at rank 2, 2^1-1 at rank 4
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    assert_close(m["ndcg@10"], dcg / ideal)
    assert (m["recall@1"], m["recall@2"], m["recall@4"]) == (0.0, 0.5, 1.0)
    assert m["groups"] == 1


def test_metrics_average_over_groups_and_count_what_cannot_be_ranked():
    scores = [2, 1, 3, 0.5, 1, 7, 0, 0]
    labels = [1, 0, 0, 1, 0, 1, 0, 0]
    groups = ["a", "a", "b", "b", "b", "single", "none", "none"]
    m = ranking_metrics(scores, labels, groups)
    assert_close(m["mrr@10"], (1 + 1 / 3) / 2)        # a: first; b: third
    assert (m["groups"], m["groups_single_candidate"], m["groups_without_relevant"]) == (2, 1, 1)


def test_equal_scores_rank_the_relevant_candidate_last():
    """A model that says nothing (all scores equal) must not look good because of file order."""
    m = ranking_metrics([1.0, 1.0, 1.0], [1, 0, 0], [7, 7, 7])
    assert_close(m["mrr@10"], 1 / 3)


def test_mrr_at_10_is_zero_beyond_the_cutoff():
    scores = np.arange(12, 0, -1.0)          # candidate 11 (relevant) is ranked 12th
    labels = np.zeros(12)
    labels[11] = 1
    m = ranking_metrics(scores, labels, np.zeros(12))
    assert m["mrr@10"] == 0.0 and m["recall@10"] == 0.0 and m["ndcg@10"] == 0.0


# ---- pair ids and tokenization --------------------------------------------------------------

def test_a_pair_id_covers_both_texts_in_order():
    assert sample_id("a b", "c") != sample_id("a", "b c")
    assert sample_id("q", "p") != sample_id("p", "q")
    assert sample_id("q", "p") != sample_id("q")
    assert sample_id("q  ", " p") == sample_id("q", "p")          # normalised like single texts
    assert sample_ids(["q"], ["p"]).tolist() == [sample_id("q", "p")]
    assert sample_ids(["q"]).tolist() == [sample_id("q")]


def test_pairs_are_tokenized_as_pairs_and_cut_in_the_passage():
    tok = tiny.tokenizer(pairs=True)
    out = encode(tok, ["the cat"], ["a dog runs fast in the city"], max_length=8)
    ids = out.features["input_ids"][0]
    assert len(ids) == 8 and out.truncated.tolist() == [True]
    assert tok.decode(ids) == "[CLS] the cat [SEP] a dog runs [SEP]"     # the query is whole
    assert out.features["token_type_ids"][0] == [0, 0, 0, 0, 1, 1, 1, 1]
    short = encode(tok, ["the cat"], ["a dog"], max_length=8)
    assert short.truncated.tolist() == [False]


def test_a_query_too_long_for_only_second_is_cut_longest_first_and_flagged():
    tok = tiny.tokenizer(pairs=True)
    texts, pairs = ["the cat " * 6, "the cat"], ["a dog", "a dog"]
    out = encode(tok, texts, pairs, max_length=8)
    assert [len(i) for i in out.features["input_ids"]] == [8, 7]
    assert out.truncated.tolist() == [True, False]
    assert 1 in out.features["token_type_ids"][0]                    # the passage is still in


def test_truncation_only_first_keeps_the_passage():
    tok = tiny.tokenizer(pairs=True)
    out = encode(tok, ["the cat runs fast in the city"], ["a dog"], 8, truncation="only_first")
    assert tok.decode(out.features["input_ids"][0]).endswith("[SEP] a dog [SEP]")


# ---- group losses ---------------------------------------------------------------------------

S = torch.tensor([0.0, 1.0, 2.0, 5.0, 1.0])
T = torch.tensor([1.0, 0.0, 2.0, 3.0, 2.0])
G = torch.tensor([0, 0, 0, 1, 1])


def test_listwise_is_the_kl_of_each_groups_softmax_by_hand():
    def kl(s, t, temp):
        ps, pt = torch.softmax(s / temp, 0), torch.softmax(t / temp, 0)
        return float((pt * (pt.log() - ps.log())).sum())

    for temp in (1.0, 2.0):
        expected = temp ** 2 * (kl(S[:3], T[:3], temp) + kl(S[3:], T[3:], temp)) / 2
        assert_close(listwise_kl(S, T, temp, G), expected)
    assert_close(listwise_kl(S + 4.0, T, 1.0, G), listwise_kl(S, T, 1.0, G))   # shift-invariant


def test_margin_mse_is_the_mean_over_a_groups_pairs_by_hand():
    def group(s, t):
        pairs = [(i, j) for i in range(len(s)) for j in range(i + 1, len(s))]
        return sum(0.5 * float((s[i] - s[j]) - (t[i] - t[j])) ** 2 for i, j in pairs) / len(pairs)

    expected = (group(S[:3], T[:3]) + group(S[3:], T[3:])) / 2
    assert_close(margin_mse(S, T, 1.0, G), expected)


@pytest.mark.parametrize("loss", [listwise_kl, margin_mse])
def test_single_candidate_groups_and_weight_zero_rows_carry_no_weight(loss):
    single = torch.tensor([0, 0, 0, 1, 2])             # groups 1 and 2 have one candidate each
    assert_close(loss(S, T, 1.0, single), loss(S[:3], T[:3], 1.0, torch.zeros(3, dtype=torch.long)))
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])  # row 2 is no member of group 0
    kept = torch.tensor([0, 1, 3, 4])
    assert_close(loss(S, T, 1.0, G, weights), loss(S[kept], T[kept], 1.0, G[kept]))


def test_a_group_loss_without_groups_is_an_error_not_zero():
    with pytest.raises(ValueError, match="corpus.group_column"):
        score_loss("listwise", S, T, 1.0, None)


def test_the_listwise_gradient_is_the_softmax_difference():
    grad = score_gradient("listwise", S[:3], T[:3], 1.0, torch.zeros(3, dtype=torch.long))
    expected = torch.softmax(S[:3], 0) - torch.softmax(T[:3], 0)
    assert torch.allclose(grad, expected, atol=1e-6)


# ---- ensemble rules under each loss ---------------------------------------------------------

def batch(scores, groups=None, valid=None) -> TeacherBatch:
    """[B, K] teacher scores as a single-score TeacherBatch."""
    logits = torch.tensor(scores, dtype=torch.float32)[..., None]
    b, k = logits.shape[:2]
    return TeacherBatch(logits=logits, covered=torch.ones(k, 1, dtype=torch.bool),
                        valid=torch.ones(b, k, dtype=torch.bool) if valid is None else torch.tensor(valid),
                        groups=None if groups is None else torch.tensor(groups))


# Three candidates of one query; teachers 0 and 1 agree, teacher 2 ranks them the other way.
OUTLIER = [[2.0, 2.2, -3.0], [0.0, 0.2, 0.0], [-2.0, -1.8, 3.0]]
ONE_GROUP = [0, 0, 0]


def loss_and_grad(method, student, teachers):
    student = student.clone().requires_grad_(True)
    out = method(student, teachers)
    out.loss.backward()
    return out, student.grad


@pytest.mark.parametrize("name, target", [("mean", [1.2 / 3, 0.2 / 3, -0.8 / 3]),
                                          ("median", [2.0, 0.0, -1.8]),
                                          ("single", [2.0, 0.0, -2.0])])
@pytest.mark.parametrize("loss", ["pointwise", "listwise", "margin_mse"])
def test_target_rules_distil_their_target_with_the_chosen_loss(name, target, loss):
    teachers = batch(OUTLIER, ONE_GROUP)
    student = torch.tensor([[0.5], [0.0], [-0.5]])
    out = score_method(name, temperature=1.0, loss=loss)(student, teachers)
    expected = score_loss(loss, student, torch.tensor(target)[:, None], 1.0, teachers.groups,
                          torch.ones(3))
    assert_close(out.loss, expected)


@pytest.mark.parametrize("loss", ["pointwise", "listwise", "margin_mse"])
def test_govern_outvotes_the_outlier_per_candidate_in_every_loss(loss):
    teachers = batch(OUTLIER, ONE_GROUP)
    out, grad = loss_and_grad(score_method("govern", temperature=1.0, loss=loss),
                              torch.zeros(3, 1), teachers)
    rates = [out.metrics[f"govern/agreement/{k}"] for k in range(3)]
    assert rates[2] < rates[0] and rates[2] < rates[1]          # the outlier is outvoted most
    # The step follows teachers 0 and 1: candidate 0 up (negative gradient), candidate 2 down.
    assert grad[0, 0] < 0 and grad[2, 0] > 0
    if loss != "pointwise":
        assert_close(grad.sum(), 0.0)                            # centred per group


def test_govern_listwise_step_is_the_mean_gradient_of_the_majority_per_candidate():
    teachers = batch(OUTLIER, ONE_GROUP)
    student = torch.zeros(3, 1)
    _, grad = loss_and_grad(score_method("govern", temperature=1.0, loss="listwise"), student, teachers)
    per_teacher = torch.stack([score_gradient("listwise", student, teachers.logits[:, k], 1.0,
                                              teachers.groups) for k in range(3)], 1)[..., 0]
    signs = per_teacher.sign()
    majority = signs.sum(1).sign()
    step = torch.stack([per_teacher[i][signs[i] == majority[i]].mean() for i in range(3)])
    assert torch.allclose(grad[:, 0], step - step.mean(), atol=1e-6)


def test_govern_groups_are_voted_and_centred_apart():
    scores = OUTLIER + [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    teachers = batch(scores, [0, 0, 0, 1, 1])
    _, grad = loss_and_grad(score_method("govern", temperature=1.0, loss="margin_mse"),
                            torch.zeros(5, 1), teachers)
    assert_close(grad[:3].sum(), 0.0)
    assert_close(grad[3:].sum(), 0.0)
    assert grad[3, 0] < 0 < grad[4, 0]      # group 1: every teacher puts candidate 3 above 4


def test_an_invalid_teacher_row_neither_votes_nor_joins_its_group_for_that_teacher():
    valid = [[True, True, False], [True, True, True], [True, True, True]]
    teachers = batch([[2.0, 2.2, float("nan")], [0.0, 0.2, 0.0], [-2.0, -1.8, 3.0]], ONE_GROUP, valid)
    teachers.logits = teachers.logits.nan_to_num(0.0)
    out, grad = loss_and_grad(score_method("govern", temperature=1.0, loss="listwise"),
                              torch.zeros(3, 1), teachers)
    assert torch.isfinite(grad).all()
    votes_of_2 = out.metrics["govern/agreement/2"]
    assert 0.0 <= votes_of_2 <= 1.0
