"""Run folders: one per method, `--output`, resume only with the same settings, checkpoints
that survive a truncated file, training time over all legs of a run."""

import json
import logging
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from distill.flows.cli import app
from distill.pipeline.config import load_config
from distill.pipeline.trainer import Progress, train
from test_trainer import _config

pytestmark = pytest.mark.usefixtures("prefect")
runner = CliRunner()


def _weights(folder):
    return load_file(folder / "student" / "model.safetensors")


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def _error_line(result):
    """The one line a user error prints on stderr, with no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    return " ".join(result.stderr.split())


def test_each_method_has_its_own_run_folder_and_output_overrides_the_config(project):
    path = _config(project, epochs=1)
    first = runner.invoke(app, ["train", str(path)])
    assert first.exit_code == 0, first.output
    mean = project.root / "run" / "mean"
    assert f"student written to {mean / 'student'}" in " ".join(first.stdout.split())
    before = _weights(mean)
    second = runner.invoke(app, ["train", str(path), "--method", "median"])
    assert second.exit_code == 0, second.output
    _assert_same(_weights(mean), before)                      # the mean student is untouched
    assert json.loads((mean / "report.json").read_text())["method"] == "mean"
    median = json.loads((project.root / "run" / "median" / "report.json").read_text())
    assert median["method"] == "median"
    assert median["student"] == str(project.root / "run" / "median" / "student")
    assert "not held out" in median["ensemble_agreement_on"]
    assert "ensemble_agreement: measured on the training corpus" in \
        (project.root / "run" / "median" / "report.md").read_text()

    elsewhere = project.root / "elsewhere"
    third = runner.invoke(app, ["train", str(path), "--output", str(elsewhere), "--method", "median"])
    assert third.exit_code == 0, third.output
    assert (elsewhere / "median" / "student" / "model.safetensors").exists()
    assert str(elsewhere / "median" / "student") in " ".join(third.stdout.split())


def test_resume_refuses_a_checkpoint_of_other_settings_and_a_new_run_over_an_unfinished_one(project):
    path = _config(project, checkpoint_every=2)
    train(load_config(path), max_steps=3)
    text = path.read_text().replace("lr: 0.001", "lr: 0.002").replace("epochs: 2", "epochs: 3")
    assert text != path.read_text()
    path.write_text(text)
    line = _error_line(runner.invoke(app, ["train", str(path), "--resume"]))
    assert "made with other settings" in line
    assert "train.lr: checkpoint 0.001, now 0.002" in line and "train.epochs: checkpoint 2, now 3" in line
    # another method has nothing to resume; a new run would throw the unfinished one away
    assert "no checkpoint to resume from" in _error_line(
        runner.invoke(app, ["train", str(path), "--resume", "--method", "median"]))
    assert "holds an unfinished mean run" in _error_line(runner.invoke(app, ["train", str(path)]))
    assert sorted(p.name for p in (project.root / "run" / "mean" / "checkpoints").iterdir()) == \
        ["step-00000002", "step-00000003"]                    # nothing was lost


def test_a_truncated_latest_checkpoint_falls_back_and_the_run_still_ends_exactly(project, caplog):
    path = _config(project, checkpoint_every=2)
    config = load_config(path)
    train(config)
    whole = _weights(project.root / "run" / "mean")
    config.train.output = str(project.root / "run2")
    train(config, max_steps=5)
    folder = project.root / "run2" / "mean" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000004", "step-00000005"]
    (folder / "step-00000005" / "model.safetensors").write_bytes(b"truncated")
    before = json.loads((folder / "step-00000004" / "cursor.json").read_text())["cursor"]["train_seconds"]
    loop = {}
    timing = Progress(start=lambda total: loop.setdefault("start", time.perf_counter()),
                      step=lambda step, metrics: loop.update(end=time.perf_counter()))
    with caplog.at_level(logging.WARNING):
        resumed = train(config, resume=True, progress=timing)
    assert "step-00000005 is unusable" in caplog.text and "falling back" in caplog.text
    assert resumed["finished"] and resumed["steps"] == 12
    _assert_same(_weights(project.root / "run2" / "mean"), whole)
    # the report counts the first leg (up to the checkpoint it resumed from) and this one
    assert before > 0 and resumed["train_seconds"] >= before + (loop["end"] - loop["start"])

    for checkpoint in folder.iterdir():
        (checkpoint / "model.safetensors").write_bytes(b"")
    text = path.read_text().replace("output: run", f"output: {project.root / 'run2'}")
    path.write_text(text)
    line = _error_line(runner.invoke(app, ["train", str(path), "--resume"]))
    assert "no usable checkpoint" in line


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin", "cursor.json"])
def test_a_flipped_byte_in_the_latest_checkpoint_falls_back_instead_of_training_on_it(project, caplog,
                                                                                       damaged):
    """A flipped byte loads without complaint from safetensors or torch.load (or still parses as
    JSON): only the checkpoint's checksums tell, and the resume must not continue from it."""
    path = _config(project, checkpoint_every=2)
    config = load_config(path)
    train(config)
    whole = _weights(project.root / "run" / "mean")
    config.train.output = str(project.root / "run2")
    train(config, max_steps=5)
    latest = project.root / "run2" / "mean" / "checkpoints" / "step-00000005" / damaged
    data = bytearray(latest.read_bytes())
    at = len(data) - 40 if damaged != "cursor.json" else data.rindex(b'"step": 5') + len('"step": ')
    data[at] ^= 0x06  # a weight's low bits, an optimizer moment's, or step 5 -> 3
    latest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        resumed = train(config, resume=True)
    assert f"step-00000005 is unusable ({damaged} differ" in caplog.text
    assert resumed["finished"] and resumed["steps"] == 12
    _assert_same(_weights(project.root / "run2" / "mean"), whole)
