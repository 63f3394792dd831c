"""The Python API of docs/python-api.md: its example runs as written, with tiny real models."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import distill

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def _example() -> str:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return code


@pytest.mark.usefixtures("prefect")
def test_the_documented_example_runs_and_returns_what_it_says(project, monkeypatch):
    project.config("distill.yaml", student={"from_teacher": "a", "layers": 1, "max_length": 16},
                   train={"epochs": 1, "batch_size": 16, "lr": 1e-3, "output": "run"})
    monkeypatch.chdir(project.root)
    scope: dict = {}
    exec(compile(_example(), str(DOC), "exec"), scope)

    assert [s["teacher"] for s in scope["summaries"]] == ["a", "b"]
    report = scope["report"]
    assert Path(report["student"]) == project.root / "run" / "median" / "student"
    assert json.loads((project.root / "run" / "median" / "report.json").read_text())["method"] == "median"

    table, ds = scope["table"], scope["ds"]
    corpus = [json.loads(line)["text"] for line in project.corpus.read_text().splitlines()]
    assert table.num_rows == len(corpus) == len(ds)
    assert sorted(table.column("text").to_pylist()) == sorted(corpus)  # row for row with the text
    assert table.column_names[:3] == ["sample_id", "row", "text"] and "logits" in table.column_names
    assert ds.column_names == table.column_names
    rows = table.column("row").to_numpy()
    assert [corpus[r] for r in rows] == table.column("text").to_pylist()
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False))
    assert logits.shape == (len(corpus), 4) and np.isfinite(logits).all()

    overview = scope["overview"]
    assert [(t["name"], t["complete"]) for t in overview["teachers"]] == [("a", True), ("b", True)]


def test_import_distill_is_light_and_names_its_api():
    import subprocess
    import sys

    code = ("import sys, distill, distill.storage.cache; "
            "assert all(callable(getattr(distill, n)) for n in distill.__all__); "
            "print(sorted(m for m in ('torch', 'transformers', 'prefect') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert set(distill.__all__) == {"load_config", "cache", "train", "teacher_table",
                                    "teacher_dataset", "inspect"}
