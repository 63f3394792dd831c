"""Pair corpora end to end on tiny real models: the plan, cross-encoder and NLI-style pair
teachers (checked against the models run directly), group-aware batching, the ranking report,
`distill inspect --labels` and SQL, the bad inputs, and examples/relevance/distill.yaml run
through the command line."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

import tiny
from distill.flows.cli import app
from distill.inspection.ranking import ranking_metrics
from distill.pipeline.caches import open_caches
from distill.pipeline.caching import teacher_cache
from distill.pipeline.config import ConfigError, load_config
from distill.pipeline.corpus import plan_corpus
from distill.pipeline.kinds.classification.recipe import label_space
from distill.pipeline.kinds.classification.stream import ClassificationStream
from distill.storage.aligned import AlignedCache
from distill.storage.cache import Cache
from distill.storage.ids import sample_id
from test_cli import one_line_error

runner = CliRunner()
EXAMPLE = Path(__file__).parent.parent / "examples" / "relevance" / "distill.yaml"


def pair_rows(queries: int, candidates: int, seed: int, sizes: list[int] | None = None) -> list[dict]:
    """Query groups of tiny-vocabulary pairs; the first candidate of each is the relevant one
    (graded 2), the second partly (1), the rest not (0). `sizes` sets each group's size."""
    rng = random.Random(seed)
    rows = []
    for q in range(queries):
        query = " ".join(rng.choice(tiny.WORDS) for _ in range(rng.randint(2, 4)))
        for c in range(sizes[q] if sizes else candidates):
            passage = " ".join(rng.choice(tiny.WORDS) for _ in range(rng.randint(3, 14)))
            rows.append({"query": query, "passage": passage, "query_id": f"q{seed}-{q}",
                         "relevance": max(0, 2 - c)})
    return rows


def write_example(root: Path, teachers: int = 3) -> Path:
    """examples/relevance/distill.yaml in `root` with a generated corpus and eval file and tiny
    cross-encoders at the paths it names (smaller lengths and batches for speed)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    tiny.write_jsonl(root / "data" / "pool.jsonl", pair_rows(10, 5, seed=1))
    tiny.write_jsonl(root / "data" / "test.jsonl", pair_rows(6, 5, seed=2))
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["corpus"]["rows_per_shard"] = 20
    for k, teacher in enumerate(raw["teachers"][:teachers]):
        tiny.classifier(root / teacher["model"], num_labels=1, seed=10 + k, pairs=True)
        teacher.update(max_length=16, batch_size=16)
    raw["teachers"] = raw["teachers"][:teachers]
    raw["student"]["layers"] = 1
    raw["student"]["max_length"] = 16
    raw["train"].update(epochs=1, batch_size=10)
    path = root / "distill.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cache_directly(config_path: Path):
    """Plan the config's corpus and cache every teacher without Prefect (the units under test)."""
    config = load_config(config_path)
    cache = Cache(config.cache)
    plan = plan_corpus(cache, config.corpus)
    for teacher in config.teachers:
        tc = teacher_cache(cache, plan, teacher)
        tc.start()
        for index in range(len(plan.shards)):
            tc.compute(index)
        tc.finalize()
    return config, cache, plan


@torch.inference_mode()
def run_directly(model_dir: Path, texts: list[str], pairs: list[str], max_length: int) -> np.ndarray:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for text, pair in zip(texts, pairs):
        inputs = tokenizer(text, pair, truncation="only_second", max_length=max_length,
                           return_tensors="pt")
        out.append(model(**inputs).logits[0].numpy())
    return np.stack(out)


# ---- the plan and the teachers --------------------------------------------------------------

def test_pair_plan_keeps_both_texts_and_groups_and_counts_empty_passages(tmp_path):
    rows = pair_rows(4, 3, seed=0, sizes=[3, 3, 1, 2])
    rows[1]["passage"] = "   "                        # an empty passage: a counted skip
    path = write_example(tmp_path)
    tiny.write_jsonl(tmp_path / "data" / "pool.jsonl", rows)
    config = load_config(path)
    plan = plan_corpus(Cache(config.cache), config.corpus)
    assert (plan.rows, plan.skipped.empty, plan.skipped.examples["empty"]) == (8, 1, [1])
    assert (plan.pair_column, plan.group_column, plan.groups) == ("passage", "query_id", 4)
    assert plan.single_candidate_groups == 1
    text = Cache(config.cache).read_text_shard(plan, 0)
    assert text.column_names == ["sample_id", "row", "text", "pair", "group"]
    first = text.slice(0, 1).to_pylist()[0]
    assert first["sample_id"] == sample_id(rows[0]["query"], rows[0]["passage"])
    assert (first["text"], first["pair"], first["group"]) == (rows[0]["query"], rows[0]["passage"],
                                                              rows[0]["query_id"])
    # The same queries with other passages are another corpus: the ids cover both texts.
    rows[0]["passage"] += " moon"
    tiny.write_jsonl(tmp_path / "data" / "pool.jsonl", rows)
    assert plan_corpus(Cache(config.cache), config.corpus).plan_id != plan.plan_id


def test_foreign_readers_see_both_texts_of_a_pair_text_shard(tmp_path):
    import datasets
    import polars as pl
    import pyarrow as pa

    config = load_config(write_example(tmp_path))
    plan = plan_corpus(Cache(config.cache), config.corpus)
    path = str(Path(config.cache) / "corpora" / plan.plan_id / "text-00000.arrow")
    expected = pair_rows(10, 5, seed=1)[0]
    first = (expected["query"], expected["passage"], expected["query_id"])
    table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
    assert tuple(table.slice(0, 1).select(["text", "pair", "group"]).to_pylist()[0].values()) == first
    row = datasets.Dataset.from_file(path)[0]
    assert (row["text"], row["pair"], row["group"]) == first
    assert pl.read_ipc_stream(path).row(0)[2:] == first


def test_cross_encoder_and_nli_teachers_score_pairs_as_the_models_do(tmp_path):
    path = write_example(tmp_path, teachers=1)
    raw = yaml.safe_load(path.read_text())
    tiny.classifier(tmp_path / "models" / "nli", num_labels=3, seed=4, pairs=True)
    raw["teachers"].append({"name": "nli", "model": "models/nli", "max_length": 12})
    raw["teachers"][0]["max_length"] = 12
    path.write_text(yaml.safe_dump(raw))
    config, cache, plan = cache_directly(path)
    aligned = AlignedCache(cache, [t.name for t in config.teachers])
    shard = aligned.read(0)
    texts, pairs = shard.text.column("text").to_pylist(), shard.text.column("pair").to_pylist()
    for teacher, table in zip(config.teachers, shard.teachers):
        expected = run_directly(Path(teacher.model), texts, pairs, 12)
        cached = np.array(table.column("logits").to_pylist())
        assert cached.shape == expected.shape and np.allclose(cached, expected, atol=1e-5)
    assert any(shard.teachers[0].column("truncated").to_pylist())   # long passages were cut


def test_truncation_enters_the_teacher_id(tmp_path):
    path = write_example(tmp_path, teachers=1)
    raw = yaml.safe_load(path.read_text())
    config = load_config(path)
    raw["teachers"][0]["truncation"] = "longest_first"
    path.write_text(yaml.safe_dump(raw))
    other = load_config(path)
    cache = Cache(config.cache)
    plan = plan_corpus(cache, config.corpus)
    ids = {teacher_cache(cache, plan, c.teachers[0]).teacher_id for c in (config, other)}
    assert len(ids) == 2


def test_group_batches_hold_whole_groups_each_row_once_per_epoch_on_every_rank(tmp_path):
    path = write_example(tmp_path)
    tiny.write_jsonl(tmp_path / "data" / "pool.jsonl",
                     pair_rows(7, 0, seed=5, sizes=[3, 5, 2, 4, 1, 3, 6]))
    config, cache, plan = cache_directly(path)
    aligned = open_caches(config)
    labels = label_space(config, aligned)
    for world in (1, 2):
        seen = []
        for rank in range(world):
            stream = ClassificationStream(aligned, labels, batch_size=8, seed=3, rank=rank, world=world,
                                 by_group=True)
            batches = list(stream.epoch(1))
            assert len(batches) == stream.batches_per_epoch()
            for b in batches:
                groups = b.teachers.groups.numpy()
                keys = [cache_key for cache_key in _group_keys(aligned, b)]
                for g in np.unique(groups):                        # one query per batch group
                    assert len({keys[i] for i in np.flatnonzero(groups == g)}) == 1
                assert b.pairs is not None and len(b.pairs) == len(b.texts)
                seen += b.sample_ids[b.weights.numpy() > 0].tolist()
        every = [i for s in range(len(plan.shards))
                 for i in cache.read_text_shard(plan, s).column("sample_id").to_pylist()]
        assert sorted(seen) == sorted(every)                       # each row exactly once
    # whole groups: a group's rows never span two batches
    stream = ClassificationStream(aligned, labels, batch_size=8, seed=3, by_group=True)
    where = {}
    for n, b in enumerate(stream.epoch(0)):
        for key in _group_keys(aligned, b):
            where.setdefault(key, set()).add(n)
    assert all(len(batches) == 1 for batches in where.values()) and len(where) == 7


def _group_keys(aligned, batch) -> list[str]:
    by_id = {}
    for s in range(len(aligned)):
        text = aligned.cache.read_text_shard(aligned.plan, s)
        by_id.update(zip(text.column("sample_id").to_pylist(), text.column("group").to_pylist()))
    return [by_id[i] for i in batch.sample_ids.tolist()]


# ---- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, column, said", [
    ("pair_column", "passages", "corpus.pair_column"),
    ("group_column", "qid", "corpus.group_column"),
])
def test_a_missing_pair_or_group_column_is_one_line(tmp_path, key, column, said):
    path = write_example(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["corpus"][key] = column
    path.write_text(yaml.safe_dump(raw))
    line = one_line_error(["cache", str(path)])
    assert f"'{column}'" in line and said in line


def test_a_row_without_a_group_is_one_line(tmp_path):
    path = write_example(tmp_path)
    rows = pair_rows(3, 2, seed=1)
    rows[3]["query_id"] = None
    tiny.write_jsonl(tmp_path / "data" / "pool.jsonl", rows)
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"row 3: no value in the group column 'query_id'"):
        plan_corpus(Cache(config.cache), config.corpus)


def test_group_column_without_pair_column_is_a_config_error(tmp_path):
    path = write_example(tmp_path)
    raw = yaml.safe_load(path.read_text())
    del raw["corpus"]["pair_column"]
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["cache", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "corpus: Value error, group_column ranks the candidates of a query: set pair_column" \
        in result.output


@pytest.mark.usefixtures("prefect")
def test_a_group_loss_needs_groups_and_single_scores(tmp_path):
    path = write_example(tmp_path, teachers=1)
    raw = yaml.safe_load(path.read_text())
    del raw["corpus"]["group_column"], raw["eval"]["group_column"]
    path.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["cache", str(path)]).exit_code == 0
    assert "set corpus.group_column" in one_line_error(["train", str(path)])
    tiny.classifier(tmp_path / "models" / "nli", num_labels=3, seed=4, pairs=True)
    raw = yaml.safe_load(EXAMPLE.read_text()) | {"teachers": [{"name": "nli", "model": "models/nli",
                                                               "max_length": 16}]}
    raw["student"] = {"from_teacher": "nli", "layers": 1, "max_length": 16}
    raw["train"].update(epochs=1, loss="listwise")
    del raw["eval"]
    path.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["cache", str(path)]).exit_code == 0
    assert "teachers have 3 classes; use loss: pointwise" in one_line_error(["train", str(path)])
    # the NLI-style pair classifier distils as classes, pointwise, from the same cache
    raw["train"]["loss"] = "pointwise"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(path), "--method", "mean"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "relevance" / "mean" / "report.json").read_text())
    assert len(report["labels"]) == 3 and report["finished"]


def test_a_teacher_that_cannot_read_pairs_is_refused_on_a_pair_corpus(tmp_path):
    path = write_example(tmp_path, teachers=1)
    tiny.causal_lm(tmp_path / "lm")
    raw = yaml.safe_load(path.read_text())
    raw["teachers"] = [{"name": "lm", "model": "lm", "kind": "causal-lm"}]
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    cache = Cache(config.cache)
    plan = plan_corpus(cache, config.corpus)
    with pytest.raises(ConfigError, match=r"teachers\[lm\]: the corpus is a pair corpus"):
        teacher_cache(cache, plan, config.teachers[0])


# ---- the example, end to end ----------------------------------------------------------------

@pytest.mark.usefixtures("prefect")
def test_the_relevance_example_end_to_end(tmp_path):
    """cache -> calibrate -> train (GOVERN, listwise) -> the ranking report, recomputed here
    from the teachers run directly; then inspect --labels and SQL on the same cache."""
    path = write_example(tmp_path)
    result = runner.invoke(app, ["cache", str(path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["calibrate", str(path), "--write"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    assert "ranking on the eval set" in result.output
    report = json.loads((tmp_path / "runs" / "relevance" / "govern" / "report.json").read_text())
    assert report["loss"] == "listwise" and report["groups"]["groups"] == 10
    assert any(k.startswith("govern/agreement/") for k in report["history"][0])
    ranking = report["eval"]["ranking"]
    assert set(ranking["teachers"]) == {"ce-a", "ce-b", "ce-c"}
    # The teachers' and the ensemble's figures are those of the models run directly.
    config = load_config(path)
    rows = [json.loads(line) for line in (tmp_path / "data" / "test.jsonl").read_text().splitlines()]
    texts, pairs = [r["query"] for r in rows], [r["passage"] for r in rows]
    gold, groups = [r["relevance"] for r in rows], [r["query_id"] for r in rows]
    calibrated = []
    for teacher in config.teachers:
        raw = run_directly(Path(teacher.model), texts, pairs, 16)[:, 0]
        calibrated.append(raw * teacher.calibration.scale + teacher.calibration.bias)
        expected = ranking_metrics(calibrated[-1], gold, groups)   # as training sees it
        assert abs(ranking["teachers"][teacher.name]["ndcg@10"] - expected["ndcg@10"]) < 1e-6
    ensemble = ranking_metrics(np.mean(calibrated, 0), gold, groups)
    assert abs(ranking["ensemble"]["mrr@10"] - ensemble["mrr@10"]) < 1e-6
    assert ranking["student"]["groups"] == 6
    assert "## Ranking on the eval set" in (tmp_path / "runs" / "relevance" / "govern" /
                                            "report.md").read_text()
    # another loss and method train from the same caches (no teacher runs again)
    raw = yaml.safe_load(path.read_text())
    raw["train"].update(loss="margin_mse", output="runs/margin")
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(path), "--method", "median"])
    assert result.exit_code == 0, result.output
    assert "median" in json.loads((tmp_path / "runs" / "margin" / "median" / "report.json")
                                  .read_text())["method"]
    # inspect --labels ranks every teacher and their ensemble on the labelled groups
    out = runner.invoke(app, ["inspect", str(tmp_path / "cache"), "--json", "--labels",
                              str(tmp_path / "data" / "test.jsonl"), "--text-column", "query",
                              "--pair-column", "passage", "--group-column", "query_id",
                              "--label-column", "relevance"])
    assert out.exit_code == 0, out.output
    inspected = json.loads(out.output)
    by_eval = {t["name"]: t["ranking"] for t in inspected["teachers"] if t.get("ranking")}
    assert abs(by_eval["ce-a"]["ndcg@10"] - ranking["teachers"]["ce-a"]["ndcg@10"]) < 1e-6
    assert any(r["ensemble"]["groups"] == 6 for r in inspected["ranking"])
    sql = runner.invoke(app, ["inspect", str(tmp_path / "cache"), "--json", "--sql",
                              'SELECT count(*) AS n, count(DISTINCT "group") AS g FROM texts '
                              "WHERE pair IS NOT NULL"])
    assert sql.exit_code == 0, sql.output
    assert json.loads(sql.output)[0] == {"n": 80, "g": 16}
    shutil.rmtree(tmp_path / "runs")
