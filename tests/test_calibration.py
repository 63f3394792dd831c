"""`distill calibrate`: teachers cached over the labelled eval set, a fit per teacher, written back."""

import json
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

import tiny
from distill.flows.cli import app
from distill.inspection.summaries import expected_calibration_error
from distill.pipeline.calibration import fit_platt, fit_temperature
from distill.pipeline.config import load_config

runner = CliRunner()


def direct_logits(model_dir, texts):
    """The teacher run directly (not through the cache), as the independent reference."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        return model(**tok(texts, padding=True, truncation=True, max_length=16,
                           return_tensors="pt")).logits


@pytest.mark.usefixtures("prefect")
def test_calibrate_fits_each_teacher_on_the_eval_set_and_writes_the_config(project):
    texts = tiny.sentences(80, seed=11)
    teacher_a = direct_logits(project.root / "teacher-a", texts)
    rng = random.Random(0)
    # Gold agrees with teacher a's argmax on 3 of 4 rows, so its best temperature is a specific
    # value: a row mix-up between cache and labels would move it far.
    gold = [int(p) if rng.random() < 0.75 else rng.randrange(4) for p in teacher_a.argmax(1)]
    tiny.write_jsonl(project.root / "heldout.jsonl",
                     [{"text": t, "label": f"class{g}"} for t, g in zip(texts, gold)])
    config = project.config(eval={"path": "heldout.jsonl"})

    result = runner.invoke(app, ["calibrate", str(config), "--write"])
    assert result.exit_code == 0, result.output
    assert "calibration on the eval set" in result.output and "wrote" in result.output

    expected = fit_temperature(teacher_a, torch.tensor(gold))
    written = {t.name: t.calibration for t in load_config(config).teachers}
    assert written["a"].scale == pytest.approx(1 / expected, rel=1e-3)
    assert written["a"].bias == 0.0 and written["b"].scale > 0
    # The training corpus cache was not touched: only the eval plan was cached.
    from distill.storage.cache import Cache
    sources = {Cache(project.cache).load_plan(p).source for p in Cache(project.cache).plan_ids()}
    assert sources == {str(project.root / "heldout.jsonl")}

    # `distill inspect --labels` over the same cache and labels reports the same ECE per teacher
    # (to the 3 decimals `distill calibrate` prints): one definition, one binning.
    inspected = runner.invoke(app, ["inspect", str(project.cache), "--json",
                                    "--labels", str(project.root / "heldout.jsonl")])
    assert inspected.exit_code == 0, inspected.output
    accuracy = {t["name"]: t["accuracy"] for t in json.loads(inspected.output)["teachers"]}
    for name, (rows, ece_before) in calibration_rows(result.output).items():
        assert accuracy[name]["rows"] == rows
        assert accuracy[name]["ece"] == pytest.approx(ece_before, abs=5e-4 + 1e-9), name


def calibration_rows(output: str) -> dict[str, tuple[int, float]]:
    """teacher -> (rows, ECE before) from the table `distill calibrate` prints."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 8 and cells[0] and cells[2].isdigit():
            found[cells[0]] = (int(cells[2]), float(cells[-1].split()[0]))
    assert set(found) == {"a", "b"}, output
    return found


def test_calibrate_without_an_eval_set_says_what_to_add(project):
    result = runner.invoke(app, ["calibrate", str(project.config())])
    assert result.exit_code == 2
    assert "eval" in result.output and "label_column" in result.output


def test_platt_recovers_a_known_logistic_map():
    torch.manual_seed(0)
    scores = torch.randn(20000, dtype=torch.float64) * 3
    labels = torch.bernoulli(torch.sigmoid(0.5 * scores - 1.0))
    scale, bias = fit_platt(scores, labels)
    assert scale == pytest.approx(0.5, abs=0.03) and bias == pytest.approx(-1.0, abs=0.05)


def test_expected_calibration_error_on_hand_made_rows():
    # Two bins: confidence 0.9 right 1/2 times (gap 0.4), confidence 0.6 right 2/2 (gap 0.4).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    gold = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, gold) == pytest.approx(0.4)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == pytest.approx(0.0)


def test_a_teacher_near_chance_gets_a_flat_temperature_and_a_warning():
    """Temperature scaling on logits unrelated to the labels drives T up until the teacher is
    nearly uniform: that is said in the fit (and printed by `distill calibrate`); a teacher whose
    logits do carry the labels gets a moderate T and no warning."""
    from distill.pipeline.calibration import FLAT_TEMPERATURE, _fit_classes

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 400)
    noise = rng.normal(0, 3, (400, 3))
    informed = noise + 6 * np.eye(3)[gold]
    flat = _fit_classes("random", noise, gold, np.arange(3))
    assert flat["temperature"] > FLAT_TEMPERATURE and "nearly uniform" in flat["warning"]
    good = _fit_classes("good", informed, gold, np.arange(3))
    assert good["temperature"] < FLAT_TEMPERATURE and "warning" not in good


def test_a_score_teacher_that_ranks_backwards_gets_a_warning():
    """A single-score teacher whose scores fall as relevance rises fits a negative scale: kept as
    fitted, but said in the fit; a teacher whose scores carry the labels gets none."""
    from distill.pipeline.calibration import _fit_scores

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 300).astype(np.float64)
    scores = 3 * gold + rng.normal(0, 1, 300)
    backwards = _fit_scores("backwards", -scores, gold)
    assert backwards["scale"] < 0 and "ranks relevance backwards" in backwards["warning"]
    graded = _fit_scores("graded", -scores, gold * 0.5 + 0.25 * (gold > 0))   # not 0/1: affine
    assert graded["kind"] == "affine" and graded["scale"] < 0 and "warning" in graded
    forwards = _fit_scores("forwards", scores, gold)
    assert forwards["scale"] > 0 and "warning" not in forwards
