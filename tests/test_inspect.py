"""`distill inspect` on hand-made caches: figures checked against values computed by hand."""

import base64
import io
import json
import math
import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

import handmade
from distill.flows.cli import app
from distill.inspection.plots import PLOTS
from distill.inspection.report import inspect_cache
from distill.storage.cache import Cache
from distill.storage.labelled import read_labels

runner = CliRunner()


@pytest.fixture
def scenario(tmp_path):
    handmade.scenario(tmp_path)
    return tmp_path


def _inspect(root, *args):
    return runner.invoke(app, ["inspect", str(root / "cache"), *map(str, args)])


def _report(root, *args) -> dict:
    result = _inspect(root, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_agreement_confidence_and_predictions_by_hand(scenario):
    report = _report(scenario)
    teachers = {t["name"]: t for t in report["teachers"]}
    assert list(teachers) == ["a", "b", "c", "lm"]
    preds = {"a": handmade.A_PREDS, "b": handmade.B_PREDS,
             "c": [int(p.argmax()) for p in handmade.C_PROBS]}
    for a, b in combinations("abc", 2):
        both = [(x, y) for x, y in zip(preds[a], preds[b]) if x is not None and y is not None]
        entry = next(e for e in report["agreement"] if {e["a"], e["b"]} == {a, b})
        assert entry["rows"] == len(both)
        assert entry["agreement"] == pytest.approx(sum(x == y for x, y in both) / len(both))
    assert teachers["b"]["nonfinite_rows"] == 1 and teachers["b"]["rows"] == 6
    assert teachers["b"]["predicted"] == {"x": 2, "y": 2, "z": 1}  # the failed row is not a vote
    assert teachers["a"]["predicted"] == {"x": 2, "y": 2, "z": 2}
    # c: five rows (1/2, 1/4, 1/4) in some order and one uniform row
    h = 1.5 * math.log(2) / math.log(3)
    assert teachers["c"]["mean_entropy"] == pytest.approx((5 * h + 1) / 6)
    assert teachers["c"]["mean_margin"] == pytest.approx(5 * 0.25 / 6)
    assert sum(teachers["c"]["histograms"]["entropy"]["counts"]) == 6
    assert teachers["c"]["mean_mc_mutual_info"] == pytest.approx(0.25)
    assert sum(teachers["c"]["histograms"]["mc_entropy"]["counts"]) == 6
    assert all(t["complete"] and t["missing_shards"] == [] for t in report["teachers"])


def test_the_most_disagreed_on_text_comes_first(scenario):
    group, = _report(scenario, "--examples", "2")["disagreements"]
    assert group["teachers"] == ["a", "b", "c"] and group["rows"] == 5  # b failed on row 4
    first, second = group["examples"]
    # row 5: a says z, b says x (both sure), c leans y: the widest split
    assert first["text"] == handmade.TEXTS[5]
    assert {k: v["label"] for k, v in first["predictions"].items()} == {"a": "z", "b": "x", "c": "y"}
    assert second["text"] == handmade.TEXTS[3] and first["disagreement"] > second["disagreement"]
    # the score is the teachers' mutual information over log C, here by hand for row 5
    p = np.array([[0, 0, 1], [1, 0, 0], [.25, .5, .25]])
    ent = lambda q: -sum(v * math.log(v) for v in q if v > 0) / math.log(3)  # noqa: E731
    assert first["disagreement"] == pytest.approx(ent(p.mean(0)) - np.mean([ent(q) for q in p]),
                                                  abs=1e-6)


def test_accuracy_and_reliability_against_a_labelled_file(scenario):
    report = _report(scenario, "--labels", scenario / "labels.jsonl")
    acc = {t["name"]: t["accuracy"] for t in report["teachers"] if "accuracy" in t}
    assert report["labelled_rows"] == 6 and set(acc) == {"a", "b", "c"}
    # a: x y z x on texts 0-3 against gold x y x 0(=x); text 4's label "w" is no class
    assert (acc["a"]["rows"], acc["a"]["accuracy"], acc["a"]["unknown_labels"]) == (4, 0.75, 1)
    assert acc["a"]["ece"] == pytest.approx(0.25, abs=1e-6)  # always sure, right 3 times in 4
    assert (acc["b"]["rows"], acc["b"]["accuracy"]) == (4, 0.5)  # its row 4 failed
    # c: right on all 4, with confidence 1/2 three times and 1/3 once
    assert acc["c"]["accuracy"] == 1.0
    assert acc["c"]["ece"] == pytest.approx(0.75 * 0.5 + 0.25 * (2 / 3))
    bins = [b for b in acc["c"]["bins"] if b["rows"]]
    assert [(round(b["confidence"], 6), b["rows"], b["accuracy"]) for b in bins] == [
        (0.333333, 1, 1.0), (0.5, 3, 1.0)]


def test_sampled_lm_cache_entropy_of_the_draws():
    import pyarrow as pa

    from distill.inspection.tokens import TokenStats

    counts = pa.array([[[2, 2], [4]], [[1, 1, 2]]], pa.list_(pa.list_(pa.uint8())))
    stats = TokenStats()
    stats.add(pa.table({"draw_counts": counts}))
    expected = [math.log(2), 0.0, -(2 * .25 * math.log(.25) + .5 * math.log(.5))]
    out = stats.to_json()
    assert (out["tokens"], out["sequences"]) == (3, 2)
    assert out["mean_entropy_nats"] == pytest.approx(np.mean(expected), abs=1e-6)


def test_causal_lm_cache_tail_mass_and_entropy_per_token(scenario):
    lm = next(t for t in _report(scenario)["teachers"] if t["name"] == "lm")
    tokens = lm["tokens"]
    assert lm["kind"] == "causal-lm" and (tokens["tokens"], tokens["sequences"]) == (7, 6)
    assert tokens["mean_tail_mass"] == pytest.approx((0.25 + 0 + 5 * 0.1) / 7, abs=1e-4)  # fp16
    entropies = [1.5 * math.log(2),                                   # .5 .25 + tail .25
                 -(.9 * math.log(.9) + .1 * math.log(.1)),            # no tail mass
                 *[-(.6 * math.log(.6) + .3 * math.log(.3) + .1 * math.log(.1))] * 5]
    # log-probs are cached as 8-bit codes (1/32 nat at most off)
    assert tokens["mean_entropy_nats"] == pytest.approx(np.mean(entropies), abs=0.03)
    assert sum(tokens["histograms"]["tail_mass"]["counts"]) == 7


def test_incomplete_and_damaged_caches_are_reported(tmp_path):
    cache, plan = handmade.write_plan(tmp_path / "cache", handmade.TEXTS, rows_per_shard=2)
    logits = np.eye(3)[handmade.A_PREDS].astype(np.float32)
    handmade.write_teacher(cache, plan, "half", {"logits": logits}, handmade.CLASSES, shards=[0, 2])
    manifest = handmade.write_teacher(cache, plan, "whole", {"logits": logits}, handmade.CLASSES)
    shard = tmp_path / "cache" / "teachers" / manifest.teacher_id / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-40])
    report = inspect_cache(Cache(tmp_path / "cache"))
    half, whole = report["teachers"]
    assert not half["complete"] and half["missing_shards"] == [1] and half["rows"] == 4
    assert not whole["complete"] and "truncated" in whole["problems"][0]
    assert sum(whole["predicted"].values()) == 4  # the damaged shard is left out, not read
    text = _inspect(tmp_path).output
    assert "missing shards" in text and "truncated" in text


def test_plots_and_html_report(scenario):
    plots, page = scenario / "plots", scenario / "report" / "cache.html"
    report = _report(scenario, "--plots", plots, "--html", page, "--labels", scenario / "labels.jsonl")
    written = sorted(p.name for p in plots.iterdir())
    assert written == sorted(PLOTS)  # every kind of plot has something to show here
    html = page.read_text()
    for name in written:
        png = (plots / name).read_bytes()
        assert imread(io.BytesIO(png)).shape[0] > 100  # a real image
        assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in html
    assert not re.search(r'(src|href)="(?!data:)|<script|<link|url\(', html)  # self-contained
    assert handmade.TEXTS[5] in html and "accuracy on the labelled rows" in html
    assert report["teachers"][0]["name"] == "a"  # --json still prints the report


def test_terminal_report_shows_every_section(scenario):
    result = _inspect(scenario, "--labels", scenario / "labels.jsonl")
    assert result.exit_code == 0, result.output
    for title in ("teachers", "confidence", "accuracy on the labelled rows", "causal-LM tokens",
                  "argmax agreement", "most disagreed-on texts", handmade.TEXTS[5]):
        assert title in result.output


def test_sql_examples_from_the_docs(scenario):
    def sql(query):
        result = _inspect(scenario, "--json", "--sql", query)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    disagree = sql("SELECT t.row, t.text, a.label AS a, b.label AS b FROM texts t "
                   "JOIN a USING (plan_id, row) JOIN b USING (plan_id, row) "
                   "WHERE a.pred <> b.pred ORDER BY t.row")
    assert [r["row"] for r in disagree] == [3, 5]  # b's failed row 4 is null, not a disagreement
    assert disagree[1] == {"row": 5, "text": handmade.TEXTS[5], "a": "z", "b": "x"}
    least = sql("SELECT t.text, c.label, c.confidence, c.entropy FROM c JOIN texts t "
                "USING (plan_id, row) ORDER BY c.entropy DESC LIMIT 1")
    assert least[0]["text"] == handmade.TEXTS[3] and least[0]["entropy"] == pytest.approx(1.0)
    columns = {r["column_name"]: r["data_type"] for r in sql(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'b'")}
    assert columns["logits"] == "FLOAT[3]"  # cached as float16, which DuckDB cannot read
    c_columns = sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'c'")
    assert "features" not in {r["column_name"] for r in c_columns} and "mc_probs" in str(c_columns)
    tokens = sql("SELECT sum(len(tail_logmass)) AS n, min(topk_logprob_codes[1][1]) AS top FROM lm")
    assert tokens == [{"n": 7, "top": round(-math.log(.6) * 16)}]   # log p = -code / 16
    text = _inspect(scenario, "--sql", "SELECT label, count(*) AS n FROM a GROUP BY label ORDER BY label")
    assert "3 rows" in text.output and "│ z " in text.output
    readme = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    examples = re.search(r"```sql\n(.*?)```", readme, re.S)[1]
    results = [sql(q) for q in examples.split(";") if q.strip()]
    assert len(results) == 5 and all(results)  # every README example runs and finds rows
    assert results[-1] == [{"text": handmade.TEXTS[2]}]  # a truncated text 2 and failed none


@pytest.fixture
def recached(tmp_path):
    """The scenario with two more caches of teacher `a` over the same corpus: an older one
    (other weights: it predicts z everywhere) and a newer one that never finished."""
    import os

    cache, plan = handmade.scenario(tmp_path)
    old = handmade.write_teacher(cache, plan, "a", {"logits": handmade._confident([2] * 6)},
                                 handmade.CLASSES, version="old")
    partial = handmade.write_teacher(cache, plan, "a", {"logits": handmade._confident([1] * 6)},
                                     handmade.CLASSES, shards=[0], version="partial")
    current = next(m for m in cache.manifests() if m.name == "a" and m.teacher_id not in
                   (old.teacher_id, partial.teacher_id))
    for when, m in enumerate([old, current, partial]):  # the unfinished one is the newest
        os.utime(tmp_path / "cache" / "teachers" / m.teacher_id / "manifest.json", (when, when))
    return tmp_path, {"old": old.teacher_id, "current": current.teacher_id,
                      "partial": partial.teacher_id}


def test_caches_of_one_name_get_labels_of_their_own(recached):
    root, ids = recached
    report = _report(root, "--plots", root / "plots", "--html", root / "r.html")
    titles = {t["teacher_id"]: t["title"] for t in report["teachers"]}
    assert titles[ids["current"]] == "a"  # the newest complete cache is "the" cache of a
    assert titles[ids["old"]] == f"a@{ids['old'][:8]}"
    assert titles[ids["partial"]] == f"a@{ids['partial'][:8]}"
    assert len(set(titles.values())) == len(titles) == 6
    assert [t["current"] for t in report["teachers"] if t["name"] == "a"] == [True, False, False]
    group = next(g for g in report["disagreements"] if len(g["teachers"]) > 3)
    example = group["examples"][0]
    assert example["predictions"][f"a@{ids['old'][:8]}"]["label"] == "z"  # old a is not dropped
    assert {"a", f"a@{ids['old'][:8]}", "b", "c"} <= set(example["predictions"])
    pair = next(e for e in report["agreement"] if {e["a"], e["b"]} == {"a", f"a@{ids['old'][:8]}"})
    assert pair["agreement"] == pytest.approx(2 / 6)  # a predicts z on rows 2 and 5
    assert f"a@{ids['old'][:8]}" in (root / "r.html").read_text()
    assert f"a@{ids['old'][:8]}" in _inspect(root).output
    chosen = inspect_cache(Cache(root / "cache"), used={ids["old"]})  # what --config does
    assert {t["title"]: t["teacher_id"] for t in chosen["teachers"]}["a"] == ids["old"]


def test_sql_views_of_a_recached_teacher(recached):
    root, ids = recached

    def sql(query, *args):
        result = _inspect(root, "--json", "--sql", query, *args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    labels = "SELECT string_agg(label, '' ORDER BY row) AS labels FROM {}"
    assert sql(labels.format("a")) == [{"labels": "xyzxyz"}]
    assert sql(labels.format(f'"a@{ids["old"][:8]}"')) == [{"labels": "zzzzzz"}]
    assert sql(labels.format(f'"a@{ids["partial"][:8]}"')) == [{"labels": "yyyy"}]
    readme = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    examples = re.search(r"```sql\n(.*?)```", readme, re.S)[1]
    assert all(sql(q) for q in examples.split(";") if q.strip())


def test_bad_inputs_are_clear_errors(scenario):
    unknown = _inspect(scenario, "--teacher", "zz")
    assert unknown.exit_code == 2 and "'zz'" in unknown.output and "a, b, c, lm" in unknown.output
    bad_sql = _inspect(scenario, "--sql", "SELECT nope FROM a")
    assert bad_sql.exit_code == 2 and "SQL failed" in bad_sql.output
    assert "texts(plan_id, shard, row, sample_id, text, pair, group)" in bad_sql.output  # what there is
    missing = _inspect(scenario, "--labels", scenario / "nowhere.jsonl")
    assert missing.exit_code == 2 and "nowhere.jsonl: labelled file does not exist" in missing.output
    column = _inspect(scenario, "--labels", scenario / "labels.jsonl", "--label-column", "gold")
    assert column.exit_code == 2 and "no column 'gold' (columns: text, label)" in column.output


def test_labels_from_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": ["a b", "c d"], "y": [1, 0]}), tmp_path / "l.parquet")
    (tmp_path / "l.csv").write_text("sentence,y\na b,1\nc d,0\n")
    for name in ("l.parquet", "l.csv"):
        labels = read_labels(tmp_path / name, label_column="y", text_column="sentence")
        assert sorted(labels.values()) == [0, 1] and len(labels) == 2
