"""The `distill` command line, run in-process through typer's runner."""

import json

import pytest
from typer.testing import CliRunner

from distill.flows.cli import app

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
    text = runner.invoke(app, ["inspect", str(project.cache)]).output
    assert "pairwise" not in text and "yes" in text


def test_cache_with_a_bad_config_exits_2_with_the_key(project):
    result = runner.invoke(app, ["cache", str(project.config(cache_dir="x"))])
    assert result.exit_code == 2
    assert "cache_dir: unknown key" in result.output


def test_inspect_of_a_missing_cache(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output
