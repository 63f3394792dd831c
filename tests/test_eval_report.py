"""The training report on the `eval` set: each teacher, their ensemble and the student side by
side, the teachers' numbers from their caches of the eval file (checked here against the tiny
teacher models run directly), and a refusal when those caches are missing or stale."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

import tiny
from distill.flows.caching import cache_teachers
from distill.flows.cli import app
from distill.pipeline.config import load_config
from distill.pipeline.kinds.classification.evaluate import macro_f1
from distill.pipeline.trainer import train
from test_cli import one_line_error

pytestmark = pytest.mark.usefixtures("prefect")

STUDENT = ["class0", "class1", "class2", "class3"]


def _eval_rows() -> list[dict]:
    rows = [{"text": t, "label": STUDENT[i % 4]} for i, t in enumerate(tiny.sentences(30, seed=9))]
    return rows + [{"text": "the cat runs", "label": "elsewhere"},
                   {"text": "red car", "label": "elsewhere"}, {"text": "  ", "label": "class0"}]


def _config(project, teachers=None, with_eval=True):
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(40, seed=6)])
    tiny.write_jsonl(project.root / "eval.jsonl", _eval_rows())
    extra = {"teachers": teachers} if teachers else {}
    return project.config(corpus={"path": "corpus.jsonl", "rows_per_shard": 20},
                          student={"from_teacher": "a", "layers": 1, "max_length": 16,
                                   "labels": STUDENT},
                          train={"epochs": 1, "batch_size": 16, "output": "run"},
                          **({"eval": {"path": "eval.jsonl"}} if with_eval else {}), **extra)


@torch.inference_mode()
def _probs(model_dir, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """The teacher run directly (no cache): softmax over its own classes, and their names."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return torch.softmax(model(**inputs).logits, -1).numpy(), names


def _scored(rows: list[dict], label_maps: dict[str, dict], project, report: dict) -> None:
    """Recompute each teacher's and the union ensemble's accuracy and macro-F1 from the models
    and compare with the report."""
    scored = [r for r in rows if r["label"] in STUDENT and r["text"].strip()]
    texts = [r["text"] for r in scored]
    gold = np.array([STUDENT.index(r["label"]) for r in scored])
    total, voters = np.zeros((len(texts), 4)), np.zeros(4)
    ev = report["eval"]
    for name, mapping in label_maps.items():
        probs, names = _probs(project.root / f"teacher-{name}", texts)
        columns = [STUDENT.index(mapping.get(n, n)) for n in names]
        spread = np.full((len(texts), 4), -1.0)
        spread[:, columns] = probs
        pred = spread.argmax(1)
        assert ev["teachers"][name]["accuracy"] == pytest.approx((pred == gold).mean())
        assert ev["teachers"][name]["macro_f1"] == pytest.approx(macro_f1(gold, pred, 4))
        assert ev["teachers"][name]["classes"] == len(names)
        total[:, columns] += probs
        voters[columns] += 1
    ensemble = (total / voters).argmax(1)
    assert ev["ensemble"]["accuracy"] == pytest.approx((ensemble == gold).mean())
    assert ev["ensemble"]["macro_f1"] == pytest.approx(macro_f1(gold, ensemble, 4))
    assert ev["eval_rows"] == len(texts) == 30
    assert ev["accuracy_vs_ensemble"] == pytest.approx(ev["accuracy"] / ev["ensemble"]["accuracy"])


def test_report_scores_teachers_ensemble_and_student_on_the_eval_set(project):
    path = _config(project)
    first = cache_teachers(str(path))
    assert len(first) == 4 and all(s["computed"] for s in first)  # a, b over corpus and eval
    assert not any(s["computed"] for s in cache_teachers(str(path)))  # the rerun reuses both
    report = train(load_config(path))
    _scored(_eval_rows(), {"a": {}, "b": {}}, project, report)
    ev = report["eval"]
    assert ev["eval_rows_outside_labels"] == 2 and ev["outside_labels"] == {"elsewhere": 2}
    assert ev["eval_rows_without_text"] == 1
    student = AutoModelForSequenceClassification.from_pretrained(report["student"]).eval()
    texts = [r["text"] for r in _eval_rows() if r["label"] in STUDENT and r["text"].strip()]
    gold = np.array([STUDENT.index(r["label"]) for r in _eval_rows() if r["label"] in STUDENT
                     and r["text"].strip()])
    tokenizer = AutoTokenizer.from_pretrained(report["student"])
    with torch.inference_mode():
        pred = student(**tokenizer(texts, padding=True, truncation=True, max_length=16,
                                   return_tensors="pt")).logits.argmax(1).numpy()
    assert ev["accuracy"] == pytest.approx((pred == gold).mean())
    md = (project.root / "run" / "mean" / "report.md").read_text()
    assert "## On the eval set (30 rows)" in md and "| teacher a |" in md and "| student |" in md
    assert f"| ensemble (mean of probabilities) | {ev['ensemble']['accuracy']:.4f} |" in md
    assert "2 rows whose label is not a student class are not scored: elsewhere (2)" in md
    saved = json.loads((project.root / "run" / "mean" / "report.json").read_text())
    assert saved["eval"]["teachers"] == ev["teachers"]


def test_muka_teachers_on_label_subsets_are_scored_in_the_union_space(project):
    tiny.classifier(project.root / "teacher-a", num_labels=3, seed=1)
    tiny.classifier(project.root / "teacher-b", num_labels=3, seed=2)
    maps = {"a": {}, "b": {"class0": "class3"}}        # b covers class3, class1, class2
    teachers = [{"name": n, "model": f"teacher-{n}", "max_length": 16, "label_map": m}
                for n, m in maps.items()]
    path = _config(project, teachers=teachers)
    cache_teachers(str(path))
    report = train(load_config(path))
    _scored(_eval_rows(), maps, project, report)
    assert "| teacher a (3 of 4 classes) |" in (project.root / "run" / "mean" / "report.md").read_text()


def test_train_refuses_when_the_eval_caches_are_missing(project):
    cache_teachers(str(_config(project, with_eval=False)))
    path = _config(project)                       # `eval` added after caching
    line = one_line_error(["train", str(path)])
    assert f"run `distill cache {path}`" in line and "eval" in line
    assert not (project.root / "run").exists()    # refused before any training
    result = CliRunner().invoke(app, ["cache", str(path)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    assert "on the eval set (30 rows)" in result.output and "ensemble (mean of" in result.output
    tiny.write_jsonl(project.root / "eval.jsonl", _eval_rows() + [{"text": "blue moon", "label": "class1"}])
    line = one_line_error(["train", str(path)])    # the eval file is another corpus now
    assert "eval.jsonl changed since it was cached" in line and f"run `distill cache {path}`" in line


def test_an_eval_file_without_its_text_column_names_the_eval_key(project):
    """The eval file is cached like a corpus, so it is checked like one before Prefect starts,
    and its missing column is said as `eval.text_column`, the key to fix, not as the corpus's."""
    config = _config(project)
    tiny.write_jsonl(project.root / "eval.jsonl", [{"sentence": r["text"], "label": r["label"]}
                                                   for r in _eval_rows()])
    line = " ".join(one_line_error(["cache", str(config)]).split())
    assert "eval.path: no row of" in line and "column 'text'" in line, line
    assert "set eval.text_column" in line and "corpus." not in line, line
    assert not (project.root / "cache").exists()  # refused before anything was cached
