"""Continual distillation end to end on tiny models: two tasks cached one at a time through the
CLI (real Prefect flow runs), then the CDL trainer and its baselines, stopped and resumed."""

import json
import logging

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import tiny
from distill.flows.cli import app
from distill.pipeline.config import load_config
from distill.pipeline.continual.trainer import train_continual
from distill.storage.records import CacheError

pytestmark = pytest.mark.usefixtures("prefect")
runner = CliRunner()


def _config(project, **train) -> str:
    root = project.root
    for name, seed in (("t1", 11), ("t2", 12)):
        tiny.write_jsonl(root / f"{name}.jsonl", [{"text": t} for t in tiny.sentences(40, seed=seed)])
    tiny.write_jsonl(root / "eval.jsonl", [{"text": t, "label": f"class{i % 4}"}
                                           for i, t in enumerate(tiny.sentences(24, seed=13))])
    raw = {"cache": "cache",
           "tasks": [{"name": "t1", "corpus": {"path": "t1.jsonl", "rows_per_shard": 20},
                      "labels": ["class0", "class1"]},
                     {"name": "t2", "corpus": {"path": "t2.jsonl", "rows_per_shard": 20},
                      "labels": ["class2", "class3"]}],
           "teachers": [{"name": "a", "model": "teacher-a", "max_length": 16, "batch_size": 8},
                        {"name": "b", "model": "teacher-b", "max_length": 16, "batch_size": 8}],
           "student": {"from_teacher": "a", "layers": 1, "max_length": 16},
           "continual": {"pool_size": 4, "prompt_length": 2, "top_k": 2},
           "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "output": "run",
                     **train},
           "eval": {"path": "eval.jsonl"}}
    path = root / "continual.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _files(cache):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(cache.rglob("*")) if p.is_file()}


def test_tasks_cached_one_at_a_time_then_learnt_in_order(project):
    path = _config(project)
    result = runner.invoke(app, ["cache", path, "--task", "t1"])
    assert result.exit_code == 0, result.output
    first = _files(project.cache)
    assert len([p for p in first if p.name == "manifest.json"]) == 2
    with pytest.raises(CacheError, match=r"task 't2' has no complete teacher cache .*--task t2"):
        train_continual(load_config(path))

    result = runner.invoke(app, ["cache", path, "--task", "t2"])
    assert result.exit_code == 0, result.output
    second = _files(project.cache)
    assert {p: second[p] for p in first} == first          # task 1: same bytes, same mtimes
    assert len([p for p in second if p.name == "manifest.json"]) == 4

    result = runner.invoke(app, ["train", path])
    assert result.exit_code == 0, result.output
    assert "average accuracy" in result.output
    report = json.loads((project.root / "run" / "report.json").read_text())
    matrix = report["matrix"]
    assert report["mode"] == "prompts" and report["tasks"] == ["t1", "t2"]
    assert len(matrix) == 2 and matrix[0][1] is None
    assert all(0 <= a <= 1 for a in (matrix[0][0], matrix[1][0], matrix[1][1]))
    assert report["average_accuracy"] == pytest.approx((matrix[1][0] + matrix[1][1]) / 2)
    assert report["forgetting"] == pytest.approx(matrix[0][0] - matrix[1][0])
    assert report["steps"] == 2 * 2 * 5                    # tasks x epochs x (40 rows / 8)
    assert {h["stage"] for h in report["history"]} == {0, 1}
    # L2P: the backbone is frozen, the head learnt
    teacher = load_file(project.root / "teacher-a" / "model.safetensors")
    student = load_file(project.root / "run" / "student" / "model.safetensors")
    name = "bert.embeddings.word_embeddings.weight"
    torch.testing.assert_close(student[name], teacher[name], rtol=0, atol=0)
    assert not torch.equal(student["classifier.weight"], teacher["classifier.weight"])
    assert (project.root / "run" / "student" / "prompt_pool.safetensors").exists()

    config = load_config(path)
    config.train.output = str(project.root / "finetune")
    finetune = train_continual(config, mode="finetune")
    tuned = load_file(project.root / "finetune" / "student" / "model.safetensors")
    assert not torch.equal(tuned[name], teacher[name])     # the whole model trains
    assert len(finetune["matrix"]) == 2 and finetune["forgetting"] is not None

    config.train.output = str(project.root / "joint")
    joint = train_continual(config, mode="joint")
    assert len(joint["matrix"]) == 1 and None not in joint["matrix"][0]
    assert joint["forgetting"] is None and joint["steps"] == report["steps"]
    assert joint["average_accuracy"] == pytest.approx(np.mean(joint["matrix"][0]))


def test_cache_of_an_unknown_task_names_the_tasks(project):
    result = runner.invoke(app, ["cache", _config(project), "--task", "t9"])
    assert result.exit_code == 2
    assert "no task named 't9' (tasks: t1, t2)" in " ".join(result.output.split())  # rich wraps


def _student(folder):
    return {f"{name}/{key}": value for name in ("model", "prompt_pool")
            for key, value in load_file(folder / "student" / f"{name}.safetensors").items()}


def test_a_stopped_and_resumed_continual_run_ends_with_the_same_student(project, caplog):
    """Legs stopped mid-task (5 batches x 2 epochs per task: task 2 starts at step 10) and
    resumed, the last from the checkpoint at the end of task 1 because the latest is truncated,
    end with the weights and accuracy matrix of a run that never stopped."""
    path = _config(project, checkpoint_every=5)
    assert runner.invoke(app, ["cache", path]).exit_code == 0      # both tasks
    config = load_config(path)
    whole = train_continual(config)
    config.train.output = str(project.root / "run2")
    first = train_continual(config, max_steps=3)
    assert first["steps"] == 3 and not first["finished"] and first["matrix"] == []
    assert not (project.root / "run2" / "student").exists()
    second = train_continual(config, resume=True, max_steps=12)     # from step 3, into task 2
    assert second["steps"] == 12 and len(second["matrix"]) == 1
    folder = project.root / "run2" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000010", "step-00000012"]
    (folder / "step-00000012" / "model.safetensors").write_bytes(b"truncated")
    # Prefect set up its logging during this test (the first flow run of the process, when the
    # test runs alone), which replaced the root logger's handlers, caplog's among them
    logging.getLogger().addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING):
        resumed = train_continual(config, resume=True)
    assert "step-00000012 is unusable" in caplog.text and "falling back" in caplog.text
    assert resumed["finished"] and resumed["steps"] == whole["steps"] == 20
    assert resumed["matrix"] == whole["matrix"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    expected, again = _student(project.root / "run"), _student(project.root / "run2")
    assert expected.keys() == again.keys()
    for name in expected:
        torch.testing.assert_close(again[name], expected[name], rtol=0, atol=0)


def test_continual_resume_with_other_settings_is_refused_listing_each_difference(project):
    path = _config(project, checkpoint_every=2)
    assert runner.invoke(app, ["cache", path]).exit_code == 0
    train_continual(load_config(path), max_steps=3)
    raw = yaml.safe_load(open(path))
    raw["train"]["lr"], raw["continual"]["top_k"] = 2e-3, 1
    open(path, "w").write(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", path, "--resume"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    line = " ".join(result.stderr.split())
    assert "made with other settings" in line
    assert "train.lr: checkpoint 0.001, now 0.002" in line and "continual.top_k: checkpoint 2, now 1" in line
    result = runner.invoke(app, ["train", path, "--resume", "--mode", "joint"])
    assert result.exit_code == 2
    assert "mode: checkpoint 'prompts', now 'joint'" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["train", path])                    # would throw the run away
    assert result.exit_code == 2
    assert "holds an unfinished continual prompts run" in " ".join(result.stderr.split())
    assert sorted(p.name for p in (project.root / "run" / "checkpoints").iterdir()) == \
        ["step-00000002", "step-00000003"]                          # nothing was lost
