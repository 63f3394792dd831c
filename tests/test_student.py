"""Student initialisation: truncating a teacher to the first or evenly spaced layers."""

import numpy as np
import pytest
import torch

import tiny
from distill.pipeline.config import ConfigError
from distill.pipeline.kinds.classification.labels import LabelSpace
from distill.pipeline.student import build_student, pick_layers


def test_pick_layers():
    assert pick_layers(6, 3, "first") == [0, 1, 2]
    assert pick_layers(6, 3, "even") == [0, 2, 5]  # round(2.5) == 2: banker's rounding
    assert pick_layers(12, 4, "even")[-1] == 11 and pick_layers(12, 1, "even") == [11]
    with pytest.raises(ConfigError, match="between 1 and 6"):
        pick_layers(6, 7, "even")


def test_truncated_student_keeps_the_chosen_teacher_layers(tmp_path):
    path = tiny.classifier(tmp_path / "t", layers=4, num_labels=3)
    labels = LabelSpace(["class0", "class1", "class2"], [np.arange(3)], np.ones((1, 3), bool))
    teacher, _ = build_student(path, labels)
    student, tokenizer = build_student(path, labels, layers=2, pick="even")
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    kept = pick_layers(4, 2, "even")
    for mine, theirs in zip(student.bert.encoder.layer, [teacher.bert.encoder.layer[i] for i in kept]):
        for a, b in zip(mine.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b)
    batch = tokenizer(["the cat runs"], return_tensors="pt")
    assert student(**batch).logits.shape == (1, 3)
    student.save_pretrained(tmp_path / "s")  # a truncated student saves and reloads as itself
    from transformers import AutoModelForSequenceClassification
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "s").config.num_hidden_layers == 2


def _space(labels):
    return LabelSpace(labels, [np.arange(len(labels))], np.ones((1, len(labels)), bool))


def test_student_cut_from_a_teacher_keeps_its_head_rows_by_label_name(tmp_path):
    from transformers import AutoModelForSequenceClassification
    path = tiny.classifier(tmp_path / "t", num_labels=3)
    head = AutoModelForSequenceClassification.from_pretrained(path).classifier
    # Reordered (the student's order is not the teacher's): rows follow the names.
    student, _ = build_student(path, _space(["class2", "class0", "class1"]), layers=1)
    torch.testing.assert_close(student.classifier.weight, head.weight[[2, 0, 1]])
    torch.testing.assert_close(student.classifier.bias, head.bias[[2, 0, 1]])
    # A wider label space (amalgamation): known classes carried, the new one freshly initialised.
    wide, _ = build_student(path, _space(["class1", "new", "class0", "class2"]))
    torch.testing.assert_close(wide.classifier.weight[[0, 2, 3]], head.weight[[1, 0, 2]])
    assert not any(torch.allclose(wide.classifier.weight[1], row) for row in head.weight)
    # The teacher's label map renames its labels into the student's space first.
    renamed, _ = build_student(path, _space(["b", "a", "c"]), rename={"class0": "a", "class1": "b"})
    torch.testing.assert_close(renamed.classifier.weight[[0, 1]], head.weight[[1, 0]])
