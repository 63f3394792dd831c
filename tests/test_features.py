"""ADM-style feature distillation: consensus weights, alignment and the loss on hand-made
tensors; then end to end from cached token-level features on tiny models."""

import math

import pytest
import torch

import tiny
from distill.flows.caching import cache_teachers
from distill.pipeline.config import ConfigError, load_config
from distill.pipeline.kinds.classification.features import (
    FeatureDistiller,
    TeacherFeatures,
    align,
    consensus_weights,
)
from distill.pipeline.trainer import train


def test_consensus_weights_favour_agreeing_positions_average_one_and_are_detached():
    similarity = torch.tensor([[0.9, 0.1, 0.5, 0.7]], requires_grad=True)
    mask = torch.tensor([[True, True, True, False]])
    w = consensus_weights(similarity, mask, tau=0.1)
    e = [math.exp(x / 0.1) for x in (0.9, 0.1, 0.5)]
    expected = [3 * x / sum(e) for x in e] + [0.0]
    assert w[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert float(w[mask].mean()) == pytest.approx(1.0) and not w.requires_grad
    empty = consensus_weights(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool), tau=0.1)
    assert empty.tolist() == [[0.0, 0.0, 0.0]]     # a row without positions: no NaN


def _identity_distiller(width: int, **kwargs) -> FeatureDistiller:
    distiller = FeatureDistiller(width, [width], **kwargs)
    with torch.no_grad():
        distiller.projectors[0].weight.copy_(torch.eye(width))
        distiller.projectors[0].bias.zero_()
    return distiller


def test_consensus_loss_down_weights_the_position_where_teacher_and_student_disagree():
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])      # [B=1, T=3, H=2]
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])      # position 2 orthogonal
    feats = [TeacherFeatures(teacher, torch.ones(1, 3, dtype=torch.bool), pooled=False)]
    ones = torch.ones(1, 3, dtype=torch.long)
    uniform, _ = _identity_distiller(2, consensus=False)(student, ones, feats, torch.ones(1))
    assert float(uniform) == pytest.approx(1 / 3)                       # mean of (1 - cos) = 0, 0, 1
    consensus, metrics = _identity_distiller(2, tau=0.1)(student, ones, feats, torch.ones(1))
    weight_of_disagreement = 3 / (2 * math.exp(10) + 1)
    assert float(consensus) == pytest.approx(weight_of_disagreement / 3, rel=1e-4)
    assert metrics["features/similarity/0"] == pytest.approx(2 / 3)
    # Rows padding a rank's last batch (weight 0) take no part.
    none, _ = _identity_distiller(2, consensus=False)(student, ones, feats, torch.zeros(1))
    assert float(none) == 0.0


def test_pooled_features_weigh_rows_of_the_batch_and_pool_the_student_over_its_mask():
    hidden = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 3.0]]])   # [B=2, T=2, H=2]
    mask = torch.tensor([[1, 0], [1, 1]])
    teacher = TeacherFeatures(torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]]), torch.ones(2, 1, dtype=torch.bool),
                              True)
    student, target, valid = align(hidden, mask.bool(), teacher)
    assert student.tolist() == [[[2.0, 0.0]], [[0.0, 2.0]]] and valid.all()
    loss, _ = _identity_distiller(2, tau=0.1)(hidden, mask, [teacher], torch.ones(2))
    # row 0 agrees (cos 1), row 1 is orthogonal (cos 0): weights over the batch are 2·softmax(10, 0)
    assert float(loss) == pytest.approx(2 / (math.exp(10) + 1) / 2, rel=1e-4)


def test_token_features_align_on_the_shorter_side():
    hidden = torch.randn(1, 5, 4)
    teacher = TeacherFeatures(torch.randn(1, 3, 4), torch.tensor([[True, True, False]]), False)
    student, target, mask = align(hidden, torch.ones(1, 5, dtype=torch.bool), teacher)
    assert student.shape == target.shape == (1, 3, 4) and mask.tolist() == [[True, True, False]]


@pytest.mark.usefixtures("prefect")
@pytest.mark.parametrize("consensus", [True, False])
def test_training_with_cached_token_features(project, consensus):
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(60, seed=6)])
    teachers = [{"name": "a", "model": "teacher-a", "max_length": 16,
                 "features": {"pooling": "token", "project_to": 8, "seed": 1}},
                {"name": "b", "model": "teacher-b", "max_length": 16}]
    path = project.config(corpus={"path": "corpus.jsonl", "rows_per_shard": 30}, teachers=teachers,
                          student={"from_teacher": "a", "layers": 1, "max_length": 16},
                          train={"epochs": 3, "batch_size": 10, "lr": 1e-3, "output": "run",
                                 "features": {"consensus": consensus, "weight": 1.0}})
    cache_teachers(str(path))
    report = train(load_config(path))
    history = report["history"]
    assert all("features/loss" in h and "features/similarity/0" in h for h in history)
    assert "features/similarity/1" not in history[0]          # teacher b cached no features
    first, last = history[0]["features/similarity/0"], history[-1]["features/similarity/0"]
    assert last > first + 0.2, (first, last)                  # the projector learns the teacher's space
    assert report["finished"] and (project.root / "run" / "mean" / "student" / "config.json").exists()


@pytest.mark.usefixtures("prefect")
def test_feature_loss_errors_name_the_fix(project):
    path = project.config(student={"from_teacher": "a", "layers": 1, "max_length": 16},
                          train={"epochs": 1, "output": "run", "features": {}})
    cache_teachers(str(path))
    with pytest.raises(ConfigError, match="none of the teachers has cached features"):
        train(load_config(path))

    tok = tiny.tokenizer()
    tok.add_tokens(["zebra"])
    other = tiny.classifier(project.root / "other-student", seed=3)
    tok.save_pretrained(other)
    teachers = [{"name": "a", "model": "teacher-a", "max_length": 16, "features": {"pooling": "token"}}]
    path = project.config("token.yaml", teachers=teachers,
                          student={"model": "other-student", "max_length": 16},
                          train={"epochs": 1, "output": "run2", "features": {}})
    cache_teachers(str(path))
    with pytest.raises(ConfigError, match="tokenizer differs"):
        train(load_config(path))
