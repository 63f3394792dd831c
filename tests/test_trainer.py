"""The student trainer on tiny real models: end to end, resume, DDP over 2 CPU processes."""

import base64
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from prefect.artifacts import Artifact
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

import tiny
from distill.flows.artifacts import training_keys
from distill.flows.caching import cache_teachers
from distill.flows.cli import app
from distill.pipeline.config import ConfigError, load_config
from distill.pipeline.trainer import train
from distill.storage.cache import Cache
from distill.storage.records import CacheError

pytestmark = pytest.mark.usefixtures("prefect")


def _config(project, **train):
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(90, seed=6)])
    tiny.write_jsonl(project.root / "eval.jsonl",
                     [{"text": t, "label": f"class{i % 4}"}
                      for i, t in enumerate(tiny.sentences(20, seed=9))])
    settings = {"epochs": 2, "batch_size": 16, "lr": 1e-3, "output": "run", "method": "mean", **train}
    path = project.config(corpus={"path": "corpus.jsonl", "rows_per_shard": 25},
                          student={"from_teacher": "a", "layers": 1, "max_length": 16},
                          train=settings, eval={"path": "eval.jsonl"})
    cache_teachers(str(path))
    return path


def _plan_audit(project):
    """(rows, sample-id sum) of the corpus's plan (the cache also holds the eval file's)."""
    cache = Cache(project.cache)
    (plan,) = [p for p in map(cache.load_plan, cache.plan_ids()) if p.source.endswith("corpus.jsonl")]
    ids = np.concatenate([cache.read_text_shard(plan, i).column("sample_id").to_numpy()
                          for i in range(len(plan.shards))]).astype(np.uint64)
    return plan.rows, int(ids.sum(dtype=np.uint64))


def test_train_saves_student_report_and_sees_every_row_once(project):
    config = load_config(_config(project))
    report = train(config)
    out = project.root / "run" / "mean"
    student = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert student.config.num_hidden_layers == 1 and student.config.num_labels == 4
    saved = json.loads((out / "report.json").read_text())
    assert saved["steps"] == report["steps"] == 2 * 6 and saved["finished"]
    assert {"ensemble_agreement", "accuracy", "macro_f1", "eval_rows", "teachers",
            "ensemble"} <= set(saved["eval"])
    assert "| accuracy |" in (out / "report.md").read_text()
    rows, id_sum = _plan_audit(project)
    assert [(c["rows"], c["id_sum"]) for c in report["coverage"]] == [(rows, id_sum)] * 2
    losses = [h["loss"] for h in report["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns from the cache


def test_stopped_and_resumed_run_ends_with_the_same_weights(project):
    path = _config(project, checkpoint_every=2)
    config = load_config(path)
    train(config)
    whole = load_file(project.root / "run" / "mean" / "student" / "model.safetensors")
    config.train.output = str(project.root / "run2")
    partial = train(config, max_steps=5)
    assert partial["steps"] == 5 and not partial["finished"]
    resumed = train(config, resume=True)
    assert resumed["steps"] == 12 and resumed["finished"]
    again = load_file(project.root / "run2" / "mean" / "student" / "model.safetensors")
    assert whole.keys() == again.keys()
    for name in whole:
        torch.testing.assert_close(again[name], whole[name], rtol=0, atol=0)


def test_student_config_errors(project):
    config = load_config(_config(project))
    config.student.from_teacher = None
    with pytest.raises(ConfigError, match="student needs exactly one of"):
        train(config)


def test_train_uses_only_caches_written_with_the_current_teacher_settings(project):
    config = load_config(_config(project))
    config.teachers[1].max_length = 12          # cached with 16: a different teacher id
    with pytest.raises(CacheError, match=r"teacher\(s\) b with the config's current weights"):
        train(config)
    config.corpus.rows_per_shard = 7            # no plan of the corpus with this sharding
    with pytest.raises(CacheError, match="no cache of corpus"):
        train(config)


def test_cli_train_with_method_override_publishes_its_report(project):
    path = _config(project, epochs=1)
    result = CliRunner().invoke(app, ["train", str(path), "--method", "median"])
    assert result.exit_code == 0, result.output
    saved = json.loads((project.root / "run" / "median" / "report.json").read_text())
    assert saved["method"] == "median"
    metrics_key, report_key = training_keys("median")
    metrics = {r["metric"]: r["value"] for r in json.loads(Artifact.get(metrics_key).data)}
    assert metrics["steps"] == saved["steps"] == 6
    assert metrics["accuracy"] == round(saved["eval"]["accuracy"], 4)
    markdown = Artifact.get(report_key).data
    assert "# Student report: median" in markdown and "| accuracy |" in markdown
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)[1])
    assert imread(io.BytesIO(png)).shape[1] > 100  # the loss curve, a real image


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_split_every_epoch(project):
    path = _config(project)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "distill.flows.cli", "train", str(path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((project.root / "run" / "mean" / "report.json").read_text())
    assert report["processes"] == 2
    # the schedule counts steps, not steps x processes: it decays to 0 at the run's end only
    assert [h["lr"] > 0 for h in report["history"]] == [True] * 5 + [False]
    rows, id_sum = _plan_audit(project)
    for epoch in report["coverage"]:
        assert epoch["rows"] == rows and epoch["id_sum"] == id_sum
        assert epoch["rows_per_rank"] == [45, 45]
