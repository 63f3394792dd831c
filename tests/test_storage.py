"""The cache on disk and on S3: atomic publish, damage detection, and readers that need none of
our code."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

import handmade
from distill.storage.cache import Cache
from distill.storage.columns import fixed_rows, ragged_rows, to_matrix
from distill.storage.fs import join, publish_bytes, staged_file
from distill.storage.records import ShardEntry


def _table(rows=10, classes=3):
    logits = np.arange(rows * classes, dtype=np.float32).reshape(rows, classes)
    return pa.table({"sample_id": pa.array(np.arange(rows, dtype=np.int64) * 7919),
                     "logits": fixed_rows(logits)})


def test_staged_file_publishes_whole_or_not_at_all(cache_location):
    cache = Cache(cache_location)
    dest = join(cache.root, "x.bin")
    with pytest.raises(RuntimeError):
        with staged_file(cache.fs, dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not cache.fs.exists(dest)
    assert cache.fs.find(cache.root) == []  # the temporary file is gone too
    publish_bytes(cache.fs, dest, b"whole")
    assert cache.fs.cat_file(dest) == b"whole"


def test_shard_entry_records_rows_bytes_checksum_and_detects_damage(cache_location):
    cache = Cache(cache_location)
    entry = cache.write_shard("t1", 0, _table())
    path = join(cache.teacher_dir("t1"), entry.file)
    assert entry.rows == 10 and entry.bytes == cache.fs.size(path)
    assert cache.published_shards("t1") == {0: entry}
    assert cache.shard_problem("t1", entry) is None
    assert cache.read_shard("t1", 0).equals(_table())
    data = bytearray(cache.fs.cat_file(path))
    data[-20] ^= 0xFF
    cache.fs.pipe_file(path, bytes(data))
    assert "sha256" in cache.shard_problem("t1", entry)
    cache.fs.pipe_file(path, bytes(data[:-30]))
    assert "truncated" in cache.shard_problem("t1", entry)
    cache.fs.rm_file(path)
    assert "missing" in cache.shard_problem("t1", entry)


def test_columns_round_trip_with_nulls_and_ragged_rows():
    m = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    valid = np.array([True, False, True, True, True])
    back = to_matrix(fixed_rows(m, valid))
    assert np.isnan(back[1]).all() and np.array_equal(back[valid], m[valid])
    blocks = [np.ones((n, 3), np.float16) * n for n in (1, 4, 2)]
    ragged = ragged_rows(blocks)
    assert [len(x) for x in ragged.to_pylist()] == [1, 4, 2]
    assert ragged.type == pa.list_(pa.list_(pa.float16(), 3))


@pytest.fixture
def shard_path(tmp_path):
    table = _table().append_column("features", ragged_rows([np.ones((2, 4), np.float16)] * 10))
    entry = Cache(tmp_path).write_shard("t1", 0, table)
    return tmp_path / "teachers" / "t1" / entry.file


def test_plain_pyarrow_reads_a_shard(shard_path):
    table = pa.ipc.open_stream(pa.memory_map(str(shard_path))).read_all()
    assert table.num_rows == 10 and table.column("logits").type.list_size == 3


def test_datasets_reads_a_shard_memory_mapped(shard_path):
    import datasets

    ds = datasets.Dataset.from_file(str(shard_path))
    assert ds.cache_files[0]["filename"] == str(shard_path)  # no copy was made
    assert ds[1]["logits"] == [3.0, 4.0, 5.0]
    assert ds.features["logits"].length == 3


def test_duckdb_queries_a_shard(shard_path):
    """DuckDB has no float16 type: it reads a shard once fp16 columns are left out (docs/cache-format.md)."""
    import duckdb

    table = pa.ipc.open_stream(pa.memory_map(str(shard_path))).read_all()
    shard = table.select(["sample_id", "logits"])  # noqa: F841 (DuckDB reads the local by name)
    rows = duckdb.sql("SELECT sample_id, logits[1] AS first FROM shard WHERE logits[3] > 20 "
                      "ORDER BY sample_id").fetchall()
    assert rows == [(7 * 7919, 21.0), (8 * 7919, 24.0), (9 * 7919, 27.0)]


def test_polars_reads_a_shard(shard_path):
    import polars as pl

    df = pl.read_ipc_stream(shard_path)
    assert df.height == 10 and df["logits"].to_list()[2] == [6.0, 7.0, 8.0]


def test_inspect_runs_without_torch_transformers_or_prefect(tmp_path):
    """The base install: with torch, transformers and Prefect made unimportable, `distill
    inspect` still prints, plots, writes HTML and runs SQL, and none of them was imported."""
    handmade.scenario(tmp_path)
    model = tmp_path / "teacher"  # `--config` hashes a teacher's files, never loads them
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "corpus.jsonl").write_text("".join(f'{{"text": "{t}"}}\n' for t in handmade.TEXTS))
    (tmp_path / "config.yaml").write_text("cache: cache\ncorpus: {path: corpus.jsonl}\n"
                                          "teachers: [{name: a, model: teacher}]\n")
    code = f"""
import sys
for blocked in ('torch', 'transformers', 'prefect'):
    sys.modules[blocked] = None  # `import torch` now raises ImportError
import distill.storage.aligned, distill.storage.plan
from distill.flows.cli import app
root = {str(tmp_path)!r}
for args in ([], ['--plots', root + '/plots', '--html', root + '/r.html', '--labels',
                  root + '/labels.jsonl', '--json'], ['--sql', 'SELECT count(*) FROM a'],
             ['--config', root + '/config.yaml', '--sql', 'SELECT count(*) FROM a']):
    code = app(['inspect', root + '/cache', *args], standalone_mode=False)
    assert not code, (args, code)  # an error exits with status 2
bad = [m for m in ('torch', 'transformers', 'prefect') if sys.modules.get(m) is not None]
assert not bad, bad
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "plots").glob("*.png"))) == 7 and (tmp_path / "r.html").exists()


def test_a_damaged_entry_names_its_file(cache_location):
    cache = Cache(cache_location)
    cache.write_shard("t1", 0, _table())
    cache.fs.pipe_file(join(cache.teacher_dir("t1"), "shard-00000.json"), b"{not json")
    with pytest.raises(Exception, match=r"shard-00000\.json: not a valid ShardEntry"):
        cache.published_shards("t1")
    assert ShardEntry  # the record type the message names
