"""Causal-LM teachers end to end on tiny real Llamas: `distill cache` writes token-level sparse
caches any Arrow reader opens, `distill train` distils a layer-subset student from them, and
bad set-ups (other tokenizer, k > vocabulary, unknown mode, re-tempering) are refused."""

import json

import numpy as np
import pyarrow as pa
import pytest
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import tiny
from distill.flows.caching import cache_teachers
from distill.flows.cli import app
from distill.pipeline.config import ConfigError, load_config, parse_config
from distill.pipeline.kinds.causal_lm.stream import TokenStream
from distill.pipeline.trainer import train
from distill.storage.aligned import AlignedCache
from distill.storage.cache import Cache

pytestmark = pytest.mark.usefixtures("prefect")
VOCAB = len(tiny.WORDS) + 5


@pytest.fixture
def lm_project(tmp_path):
    tiny.write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in tiny.sentences(48, seed=8)])
    tiny.write_jsonl(tmp_path / "eval.jsonl", [{"text": t} for t in tiny.sentences(12, seed=9)])
    tiny.causal_lm(tmp_path / "lm-a", seed=1)
    tiny.causal_lm(tmp_path / "lm-b", seed=2)
    return tmp_path


def _config(root, teachers=None, name="config.yaml", **train):
    teachers = teachers or [
        {"name": "a", "model": "lm-a", "kind": "causal-lm", "max_length": 16, "batch_size": 8,
         "lm": {"mode": "top-k", "k": 6}},
        {"name": "b", "model": "lm-b", "kind": "causal-lm", "max_length": 16, "batch_size": 8,
         "lm": {"mode": "sampled", "samples": 24}}]
    raw = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 20},
           "teachers": teachers, "student": {"from_teacher": "a", "layers": 2},
           "train": {"method": "govern", "epochs": 3, "batch_size": 8, "lr": 3e-3,
                     "warmup_ratio": 0.0, "output": "run", **train},
           "eval": {"path": "eval.jsonl"}}
    path = root / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cache_writes_sparse_token_columns_and_train_distils(lm_project):
    path = _config(lm_project)
    summaries = cache_teachers(str(path))
    assert [s["teacher"] for s in summaries] == ["a", "b", "a", "b"]   # corpus, then eval text
    cache = Cache(lm_project / "cache")
    a, b = (cache.load_manifest(s["teacher_id"]) for s in summaries[:2])
    assert a.schema.field("topk_ids").type == pa.list_(pa.list_(pa.uint16(), 6))
    assert b.schema.field("draw_counts").type == pa.list_(pa.list_(pa.uint8()))
    assert a.settings["vocab_sha256"] == b.settings["vocab_sha256"] and a.settings["vocab_size"] == VOCAB
    shard = pa.ipc.open_stream(pa.memory_map(str(lm_project / "cache" / "teachers" / a.teacher_id
                                                 / "shard-00000.arrow"))).read_all()
    assert str(shard.schema.field("input_ids").type) == "list<item: uint16>"
    lengths = [len(x) for x in shard.column("input_ids").to_pylist()]
    assert [len(x) for x in shard.column("tail_logmass").to_pylist()] == lengths
    probs = np.exp(-np.array(shard.column("topk_logprob_codes")[0].as_py(), dtype=np.float64) / 16)
    tails = np.exp(np.array(shard.column("tail_logmass")[0].as_py(), dtype=np.float64))
    np.testing.assert_allclose(probs.sum(1) + tails, 1.0, atol=0.04)   # 8-bit log-probs
    aligned = AlignedCache(cache, [a.teacher_id, b.teacher_id])
    batch = next(TokenStream(aligned, 8, shuffle=False).epoch(0))
    top_k, sampled = batch.teachers
    assert top_k.ids.shape[1] == 6 and batch.input_ids.shape[0] == 8
    np.testing.assert_allclose((top_k.probs.sum(1) + top_k.tail).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(sampled.probs.sum(1).numpy(), 1.0, atol=1e-6)
    assert (sampled.tail == 0).all() and (sampled.probs * 24 % 1 == 0).all()
    draws = cache.read_shard(b.teacher_id, 0)
    assert all(sum(c) == 24 for row in draws.column("draw_counts").to_pylist() for c in row)

    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads((lm_project / "run" / "govern" / "report.json").read_text())
    student = AutoModelForCausalLM.from_pretrained(lm_project / "run" / "govern" / "student")
    assert student.config.num_hidden_layers == 2
    ev = report["eval"]
    assert report["temperature"] == 1.0 and report["eval_on"] == "eval"
    assert ev["eval_tokens"] > 0 and 0 <= ev["top1_agreement"] <= 1
    assert ev["kl_to_teacher"] < ev["kl_to_teacher_before"]           # it learned the teachers
    assert {"govern/agreement/0", "govern/agreement/1"} <= set(report["history"][0])


def test_mean_with_text_cross_entropy(lm_project):
    path = _config(lm_project, method="mean", ce_weight=0.3, epochs=1)
    cache_teachers(str(path))
    report = train(load_config(path))
    assert report["finished"] and {"kd", "ce"} <= set(report["history"][0])


def test_teacher_with_another_tokenizer_is_refused(lm_project):
    tiny.causal_lm(lm_project / "lm-c", seed=3, words=tuple(reversed(tiny.WORDS)))
    teachers = [{"name": "a", "model": "lm-a", "kind": "causal-lm", "max_length": 16},
                {"name": "c", "model": "lm-c", "kind": "causal-lm", "max_length": 16}]
    path = _config(lm_project, teachers, epochs=1)
    cache_teachers(str(path))
    with pytest.raises(ConfigError, match="'teacher c' and 'teacher a' use different tokenizers"):
        train(load_config(path))


def test_bad_settings_are_refused_with_the_key_and_the_fix(lm_project):
    big_k = [{"name": "a", "model": "lm-a", "kind": "causal-lm", "lm": {"k": VOCAB + 1}}]
    with pytest.raises(ConfigError, match=rf"teachers\[a\].lm.k is {VOCAB + 1}.*use k <= {VOCAB}"):
        cache_teachers(str(_config(lm_project, big_k)))
    with pytest.raises(ConfigError, match=r"teachers.0.lm.mode: Input should be 'top-k' or 'sampled'"):
        parse_config({"corpus": {"path": "x"}, "teachers": [
            {"name": "a", "model": "m", "kind": "causal-lm", "lm": {"mode": "topk"}}]})
    with pytest.raises(ConfigError, match="mc_dropout: not available for causal-lm teachers"):
        parse_config({"corpus": {"path": "x"}, "teachers": [
            {"name": "a", "model": "m", "kind": "causal-lm", "mc_dropout": {"passes": 4}}]})
    path = _config(lm_project, temperature=2.0)
    cache_teachers(str(path))
    with pytest.raises(ConfigError, match="train.temperature is 2.0.*lm.temperature 1.0"):
        train(load_config(path))
    with pytest.raises(ValueError, match="'median' has no form for causal-lm teachers"):
        train(load_config(path).model_copy(update={"train": load_config(path).train.model_copy(
            update={"method": "median", "temperature": 1.0})}))
