"""The manual: README and docs/ stay true, linked, self-contained and in step with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from distill.storage.cache import Cache
from distill.storage.columns import fixed_rows

ROOT = Path(__file__).resolve().parents[1]
# Names of the founding notes kept outside the repository, spelled in parts so that this test
# is not itself a reference to them.
OUTSIDE = tuple("".join(parts) for parts in (("DES", "IGN.md"), ("BENCH", "MARK.md"), ("pap", "ers.md"),
                                              ("govern", "-check"), ("eco", "system.md"),
                                              ("models-", "and-data"), ("shared/", "research")))


def test_config_reference_is_generated_from_the_models():
    """docs/config.md is what the generator prints now: fails when a field changes without
    `python -m distill.pipeline.config_docs > docs/config.md`."""
    done = subprocess.run([sys.executable, "-m", "distill.pipeline.config_docs"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == (ROOT / "docs" / "config.md").read_text()


def test_every_config_key_has_a_description():
    from distill.pipeline.config_docs import missing_descriptions, rows

    keys = [key for key, *_ in rows()]
    assert {"teachers[].mc_dropout.passes", "tasks[].corpus.path", "runner.devices"} <= set(keys)
    assert missing_descriptions() == []


def test_readme_is_short():
    assert (ROOT / "README.md").stat().st_size <= 20_480


def test_no_tracked_file_cites_documents_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    found = []
    for name in tracked:
        path = ROOT / name
        if name == "tests/test_docs.py" or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        found += [f"{name}: {word}" for word in OUTSIDE if word in text]
    assert found == []


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not a link
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", [ROOT / "README.md", ROOT / "bench" / "README.md",
                                  *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_files_and_headings_that_exist(page: Path):
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(link)
    assert broken == []


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    logits = np.arange(12, dtype=np.float32).reshape(4, 3)
    table = pa.table({"sample_id": pa.array([1, 2, 3, 4], pa.int64()),
                      "logits": fixed_rows(logits, np.ones(4, bool))})
    entry = Cache(tmp_path / "cache").write_shard("t1", 0, table)
    return tmp_path / "cache" / "teachers" / "t1" / entry.file


def test_datasets_load_dataset_arrow_reads_shards(shard: Path, tmp_path: Path):
    """docs/cache-format.md: `load_dataset("arrow", data_files=...)`, copied or streamed."""
    import datasets

    ds = datasets.load_dataset("arrow", data_files=[str(shard)], split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 4 and ds[1]["logits"] == [3.0, 4.0, 5.0]
    streamed = datasets.load_dataset("arrow", data_files=[str(shard)], split="train",
                                     streaming=True)
    assert [row["sample_id"] for row in streamed] == [1, 2, 3, 4]


def test_the_readers_the_format_page_says_do_not_work(shard: Path):
    """Stream files, not IPC file format: pyarrow.dataset, Polars' read_ipc/scan_ipc and DuckDB's
    missing read_arrow fail as docs/cache-format.md says, so its advice stays needed."""
    import duckdb
    import polars as pl
    import pyarrow.dataset

    with pytest.raises(pa.ArrowInvalid):
        pyarrow.dataset.dataset(str(shard), format="arrow").to_table()
    for read in (lambda: pl.read_ipc(shard), lambda: pl.scan_ipc(shard).collect()):
        with pytest.raises(pl.exceptions.ComputeError):
            read()
    with pytest.raises(duckdb.CatalogException):
        duckdb.sql(f"SELECT * FROM read_arrow('{shard}')")
    half = pa.table({"x": pa.array(np.ones(2, np.float16))})  # noqa: F841 (DuckDB reads it by name)
    with pytest.raises(duckdb.NotImplementedException):
        duckdb.sql("SELECT * FROM half").fetchall()
