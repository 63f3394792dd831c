"""The `distill` command line, run in-process through typer's runner."""

import json
import time

import pytest
from typer.testing import CliRunner

from distill.flows.cli import app
from distill.pipeline.config import load_config
from distill.pipeline.preflight import check_inputs

runner = CliRunner()


@pytest.mark.usefixtures("prefect")
def test_cache_then_inspect(project):
    config = project.config()
    result = runner.invoke(app, ["cache", str(config), "--teacher", "b"])
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.output and "120" in result.output
    report = json.loads(runner.invoke(app, ["inspect", str(project.cache), "--json"]).output)
    assert [t["name"] for t in report["teachers"]] == ["b"]
    assert report["teachers"][0]["complete"] and report["plans"][0]["rows"] == 120
    text = runner.invoke(app, ["inspect", str(project.cache), "--verify"]).output
    assert "pairwise" not in text and "yes" in text


def test_cache_with_a_bad_config_exits_2_with_the_key(project):
    result = runner.invoke(app, ["cache", str(project.config(cache_dir="x"))])
    assert result.exit_code == 2
    assert "cache_dir: unknown key" in result.output


def test_inspect_of_a_missing_cache(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def one_line_error(args: list[str]) -> str:
    """Run a command that must stop at a user error: status 2 and one line, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_a_missing_corpus_is_reported_before_prefect_starts(project):
    config = project.config(corpus={"path": "nowhere.jsonl"})
    started = time.monotonic()
    line = one_line_error(["cache", str(config)])
    assert time.monotonic() - started < 5  # no Prefect server was started for it
    assert "corpus.path" in line and "nowhere.jsonl does not exist" in line
    verbose = runner.invoke(app, ["cache", str(config), "-v"])
    assert verbose.exit_code == 2 and "Traceback" in verbose.output


def test_an_empty_corpus_is_one_line(project):
    project.corpus.write_text("")
    assert "is empty" in one_line_error(["cache", str(project.config())])


def test_a_missing_model_folder_is_reported_before_prefect_starts(project):
    config = project.config(teachers=[{"name": "a", "model": "./teacher-z"}])
    assert "teacher-z does not exist" in one_line_error(["cache", str(config)])


def test_custom_model_code_is_refused_unless_trusted(project):
    settings = project.root / "teacher-a" / "config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()),
                                    "auto_map": {"AutoConfig": "custom.Config"}}))
    line = one_line_error(["cache", str(project.config()), "--teacher", "a"])
    assert "auto_map" in line and "teachers[a].trust_remote_code: true" in line
    trusted = project.config(teachers=[{"name": "a", "model": "teacher-a", "trust_remote_code": True}])
    check_inputs(load_config(trusted))  # allowed once the config says so


def test_an_unknown_method_is_one_line(project):
    assert "--method" in one_line_error(["train", str(project.config()), "--method", "nope"])


def test_a_student_with_more_layers_than_its_teacher_is_one_line(project):
    config = project.config(student={"from_teacher": "a", "layers": 99})
    assert "student.layers: 99 exceeds" in one_line_error(["train", str(config)])


@pytest.mark.parametrize("option", ["--plots", "--html"])
def test_inspect_into_an_unwritable_path_is_one_line(tmp_path, option):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = one_line_error(["inspect", str(tmp_path), option, str(blocker / "out" / "report.html")])
    assert option in line and "not a writable folder" in line
