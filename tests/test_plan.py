"""Corpus plans: sample ids, sources datasets can load, shard boundaries, skipped rows."""

import json

import datasets
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

import tiny
from distill.pipeline.config import ConfigError, CorpusConfig
from distill.pipeline.corpus import plan_corpus
from distill.storage.cache import Cache
from distill.storage.ids import normalize_text, sample_id


def test_sample_id_depends_on_normalised_text_only():
    assert sample_id("a  cat\n") == sample_id("a cat") == sample_id(" a cat ")
    assert sample_id("a cat") != sample_id("a Cat")
    assert normalize_text("caf\u0065\u0301") == "caf\u00e9"  # NFC
    assert -(2**63) <= sample_id("x") < 2**63


def _plan(tmp_path, path, **corpus):
    return plan_corpus(Cache(tmp_path / "cache"), CorpusConfig(path=str(path), **corpus))


TEXTS = tiny.sentences(23, seed=5)


def _write_sources(tmp_path):
    table = pa.table({"text": TEXTS, "n": list(range(len(TEXTS)))})
    tiny.write_jsonl(tmp_path / "c.jsonl", table.to_pylist())
    pa.csv.write_csv(table, tmp_path / "c.csv")
    pq.write_table(table, tmp_path / "c.parquet")
    (tmp_path / "c.txt").write_text("\n".join(TEXTS) + "\n")
    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"))
    return ["c.jsonl", "c.csv", "c.parquet", "c.txt", "saved"]


def test_every_source_kind_gives_the_same_plan(tmp_path):
    plans = [_plan(tmp_path, tmp_path / name, rows_per_shard=10) for name in _write_sources(tmp_path)]
    assert len({p.plan_id for p in plans}) == 1
    plan = plans[0]
    assert plan.rows == 23 and [s.rows for s in plan.shards] == [10, 10, 3]
    cache = Cache(tmp_path / "cache")
    text = pa.concat_tables(cache.read_text_shard(plan, i) for i in range(3))
    assert text.column("text").to_pylist() == TEXTS
    assert text.column("row").to_pylist() == list(range(23))
    assert text.column("sample_id").to_pylist() == [sample_id(t) for t in TEXTS]


def test_plan_id_changes_with_corpus_and_sharding(tmp_path):
    tiny.write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in TEXTS])
    tiny.write_jsonl(tmp_path / "b.jsonl", [{"text": t} for t in TEXTS[:-1] + ["something else"]])
    a10 = _plan(tmp_path, tmp_path / "a.jsonl", rows_per_shard=10)
    assert _plan(tmp_path, tmp_path / "a.jsonl", rows_per_shard=10).plan_id == a10.plan_id
    assert _plan(tmp_path, tmp_path / "a.jsonl", rows_per_shard=7).plan_id != a10.plan_id
    assert _plan(tmp_path, tmp_path / "b.jsonl", rows_per_shard=10).plan_id != a10.plan_id


def test_duplicates_keep_their_order_and_bad_rows_are_counted(tmp_path):
    rows = [{"text": "a cat"}, {"text": ""}, {"text": "a cat"}, {"text": 7}, {"text": None},
            {"text": "   "}, {"other": "x"}, {"text": ["list"]}, {"text": "the dog"}]
    tiny.write_jsonl(tmp_path / "c.jsonl", rows)
    plan = _plan(tmp_path, tmp_path / "c.jsonl")
    assert plan.rows == 3
    assert plan.skipped.empty == 2 and plan.skipped.non_string == 4
    assert plan.skipped.examples == {"empty": [1, 5], "non_string": [3, 4, 6, 7]}
    text = Cache(tmp_path / "cache").read_text_shard(plan, 0)
    assert text.column("row").to_pylist() == [0, 2, 8]
    ids = text.column("sample_id").to_pylist()
    assert ids[0] == ids[1] != ids[2]
    on_disk = json.loads((tmp_path / "cache" / "corpora" / plan.plan_id / "plan.json").read_text())
    assert on_disk["skipped"]["non_string"] == 4


def test_missing_text_column_names_file_key_and_fix(tmp_path):
    tiny.write_jsonl(tmp_path / "c.jsonl", [{"body": "a cat"}])
    with pytest.raises(ConfigError, match=r"c\.jsonl: no column 'text' \(columns: body\).*text_column"):
        _plan(tmp_path, tmp_path / "c.jsonl")


def test_missing_or_empty_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        _plan(tmp_path, tmp_path / "nope.jsonl")
    tiny.write_jsonl(tmp_path / "c.jsonl", [{"text": ""}])
    with pytest.raises(ValueError, match="no usable text"):
        _plan(tmp_path, tmp_path / "c.jsonl")


def test_the_plan_id_is_remembered_until_a_corpus_file_changes(tmp_path, monkeypatch):
    """A serve worker asks for the plan id after every cache: asked again over the same files it
    is not read again, but an edit in place (here of the same size) is always seen."""
    from distill.pipeline import corpus as corpus_module

    path = tmp_path / "c.jsonl"
    tiny.write_jsonl(path, [{"text": t} for t in TEXTS])
    config = CorpusConfig(path=str(path), rows_per_shard=8)
    reads = []
    real = corpus_module.load_rows
    monkeypatch.setattr(corpus_module, "load_rows", lambda c: reads.append(1) or real(c))
    first = corpus_module.corpus_plan_id(config)
    assert corpus_module.corpus_plan_id(config) == first and len(reads) == 1
    edited = [{"text": t} for t in TEXTS]
    edited[3]["text"] = edited[3]["text"][::-1]  # same length, other text
    tiny.write_jsonl(path, edited)
    assert corpus_module.corpus_plan_id(config) != first and len(reads) == 2
    assert corpus_module.corpus_plan_id(config) == _plan(tmp_path, path, rows_per_shard=8).plan_id
