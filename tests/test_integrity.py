"""Integrity on every read: a damaged shard is refused with its name and the fix before any
step uses it, and no name read from a cache's JSON files opens anything outside its root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tiny
from distill.flows.caching import cache_teachers
from distill.flows.cli import app
from distill.inspection.report import inspect_cache
from distill.storage.aligned import AlignedCache
from distill.storage.cache import Cache
from distill.storage.records import CacheError, DamagedShard

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("prefect")


@pytest.fixture
def trained_config(project) -> Path:
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(60, seed=6)])
    config = project.config(corpus={"path": "corpus.jsonl", "rows_per_shard": 20},
                            student={"from_teacher": "a", "layers": 1, "max_length": 16},
                            train={"epochs": 1, "batch_size": 16, "lr": 1e-3, "output": "run"})
    cache_teachers(str(config))
    return config


def _flip(path: Path, at: int, count: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _teacher(project, name: str):
    cache = Cache(project.cache)
    (m,) = [m for m in cache.manifests() if m.name == name]
    return cache, m


@pytest.mark.parametrize("where", ["middle", "header"])
def test_train_refuses_a_damaged_teacher_shard_naming_it_and_the_fix(project, trained_config, where):
    cache, m = _teacher(project, "b")
    shard = Path(cache.teacher_dir(m.teacher_id)) / m.shards[1].file
    size = shard.stat().st_size
    _flip(shard, size // 2 if where == "middle" else 4)
    assert shard.stat().st_size == size  # sizes alone cannot see it
    result = runner.invoke(app, ["train", str(trained_config)])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "teacher 'b'" in out and m.shards[1].file in out and "distill cache CONFIG" in out
    assert "Traceback" not in result.output
    assert not (project.root / "run" / "student").exists()
    # the fix the message names works: the damaged shard is recomputed, training then passes
    summaries = cache_teachers(str(trained_config))
    assert {s["teacher"]: s["recomputed"] for s in summaries} == {"a": 0, "b": 1}
    assert runner.invoke(app, ["train", str(trained_config)]).exit_code == 0


def test_no_shard_bytes_reach_a_reader_unverified(project, trained_config):
    cache, m = _teacher(project, "a")
    _flip(Path(cache.teacher_dir(m.teacher_id)) / m.shards[0].file, 200)
    with pytest.raises(DamagedShard, match="does not match its recorded sha256"):
        cache.read_shard(m.teacher_id, 0)
    aligned = AlignedCache(cache, ["a", "b"])  # opening checks sizes only: it is not refused...
    with pytest.raises(DamagedShard, match=r"shard 0 of teacher 'a'.*nothing was trained on it"):
        aligned.read(0)  # ...but its bytes never get past the read
    assert aligned.read(1).teachers[0].num_rows == 20


def test_a_damaged_text_shard_is_refused_then_repaired_by_cache(project, trained_config):
    cache = Cache(project.cache)
    plan = cache.load_plan(cache.plan_ids()[0])
    text = Path(cache.plan_dir(plan.plan_id)) / plan.shards[2].file
    original = text.read_bytes()
    _flip(text, len(original) - 40)
    result = runner.invoke(app, ["train", str(trained_config)])
    assert result.exit_code == 2 and "text shard of corpus plan" in " ".join(result.output.split())
    cache_teachers(str(trained_config))
    assert text.read_bytes() == original


def test_inspect_calls_a_damaged_cache_incomplete(project, trained_config):
    cache, m = _teacher(project, "b")
    _flip(Path(cache.teacher_dir(m.teacher_id)) / m.shards[0].file, 300)
    report = inspect_cache(cache)
    by_name = {t["name"]: t for t in report["teachers"]}
    assert by_name["a"]["complete"] and not by_name["b"]["complete"]
    assert any(m.shards[0].file in p and "sha256" in p for p in by_name["b"]["problems"])
    assert by_name["b"]["rows"] == 60 and sum(by_name["b"]["predicted"].values()) == 40


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("name", ["../../../outside.arrow", "/etc/passwd", "shard-00001.arrow/.."])
def test_a_shard_name_that_leaves_the_cache_is_refused(project, trained_config, tmp_path, name):
    outside = project.root / "outside.arrow"
    outside.write_bytes(b"secret")
    cache, m = _teacher(project, "a")
    entry = Path(cache.teacher_dir(m.teacher_id)) / "shard-00001.json"
    _edit_json(entry, file=name)
    with pytest.raises(CacheError, match="not a valid ShardEntry"):
        cache.published_shards(m.teacher_id)
    result = runner.invoke(app, ["inspect", str(project.cache)])
    assert result.exit_code == 2 and "shard-00001.json" in result.output
    assert outside.read_bytes() == b"secret"


def test_a_plan_id_that_leaves_the_cache_is_refused(project, trained_config):
    cache, m = _teacher(project, "a")
    _edit_json(Path(cache.teacher_dir(m.teacher_id)) / "manifest.json", plan_id="../../x")
    with pytest.raises(CacheError, match="not a valid TeacherManifest"):
        cache.load_manifest(m.teacher_id)


def test_a_symlinked_shard_is_refused_not_followed(project, trained_config):
    cache, m = _teacher(project, "a")
    shard = Path(cache.teacher_dir(m.teacher_id)) / m.shards[0].file
    elsewhere = project.root / "elsewhere.arrow"
    shard.rename(elsewhere)
    os.symlink(elsewhere, shard)
    with pytest.raises(CacheError, match="is a link or lies outside the cache root"):
        cache.read_shard(m.teacher_id, m.shards[0])
    result = runner.invoke(app, ["train", str(trained_config)])
    assert result.exit_code == 2 and "is a link" in " ".join(result.output.split())


def test_a_manifest_moved_to_another_folder_is_refused(project, trained_config):
    cache, m = _teacher(project, "a")
    moved = Path(cache.teacher_dir("0123456789abcdef"))
    moved.mkdir()
    original = Path(cache.teacher_dir(m.teacher_id)) / "manifest.json"
    (moved / "manifest.json").write_bytes(original.read_bytes())
    with pytest.raises(CacheError, match="where 0123456789abcdef belongs"):
        cache.manifests()


def test_train_refuses_the_cache_of_a_corpus_edited_in_place(project, trained_config):
    """Plans are bound to content: the same path with other text is another corpus."""
    cache = Cache(project.cache)
    (old,) = cache.plan_ids()
    rows = [json.loads(line) for line in project.corpus.read_text().splitlines()]
    rows[7]["text"] = "the red fish sleeps"  # one row edited, the file keeps its name
    tiny.write_jsonl(project.corpus, rows)
    result = runner.invoke(app, ["train", str(trained_config)])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "changed since it was cached" in out and f"corpora/{old} (stale)" in out
    assert "distill cache" in out and not (project.root / "run").exists()
    cache_teachers(str(trained_config))  # the fix it names
    (current,) = set(cache.plan_ids()) - {old}
    result = runner.invoke(app, ["train", str(trained_config)])
    assert result.exit_code == 0, result.output
    report = json.loads(next((project.root / "run").glob("*/report.json")).read_text())
    assert report["plan_id"] == current


def test_a_grown_corpus_reuses_every_unchanged_shard(project, trained_config):
    """Append 10 % more rows and re-cache: each teacher computes only the changed last shard and
    the new ones; every row is there exactly once; the earlier cache's files are untouched."""
    cache = Cache(project.cache)
    before = {p: p.read_bytes() for p in project.cache.rglob("*") if p.is_file()}
    old_plan = cache.load_plan(cache.plan_ids()[0])
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(66, seed=6)])  # 60 + 6
    summaries = cache_teachers(str(trained_config))
    assert [(s["computed"], s["reused"]) for s in summaries] == [(1, 3), (1, 3)]
    (new_plan,) = [cache.load_plan(p) for p in cache.plan_ids() if p != old_plan.plan_id]
    assert new_plan.rows == 66 and len(new_plan.shards) == 4
    plan_ids = sorted(i for s in range(4) for i in cache.read_text_shard(new_plan, s)
                      .column("sample_id").to_pylist())
    for s in summaries:
        manifest = cache.load_manifest(s["teacher_id"])
        ids = sorted(i for e in manifest.shards
                     for i in cache.read_shard(s["teacher_id"], e).column("sample_id").to_pylist())
        assert ids == plan_ids  # every row exactly once
        meta = json.loads(cache.read_shard(s["teacher_id"], 0).schema.metadata[b"distill"])
        assert (meta["teacher_id"], meta["plan_id"]) == (s["teacher_id"], new_plan.plan_id)
    assert all(p.read_bytes() == data for p, data in before.items())  # earlier files byte-identical
    result = runner.invoke(app, ["train", str(trained_config)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("damage", ["entry", "manifest", "plan"])
def test_distill_cache_repairs_a_damaged_record(project, trained_config, damage):
    """What training refuses, `distill cache` rewrites: a shard entry (that shard is
    recomputed), a manifest or a plan (written again from the config and the corpus)."""
    cache, m = _teacher(project, "a")
    target = {"entry": Path(cache.teacher_dir(m.teacher_id)) / "shard-00001.json",
              "manifest": Path(cache.teacher_dir(m.teacher_id)) / "manifest.json",
              "plan": Path(cache.plan_dir(m.plan_id)) / "plan.json"}[damage]
    original = target.read_bytes()
    _flip(target, len(original) // 2, 3)
    if damage != "entry":  # training reads the manifest's shard list, never the entries
        refused = runner.invoke(app, ["train", str(trained_config)])
        assert refused.exit_code == 2 and target.name in refused.output
    summaries = cache_teachers(str(trained_config))
    assert {s["teacher"]: s["recomputed"] for s in summaries}["a"] == (damage == "entry")
    assert target.read_bytes() == original or damage == "entry"
    assert runner.invoke(app, ["train", str(trained_config)]).exit_code == 0
def test_a_flipped_key_in_plan_json_is_refused_on_one_line_then_rebuilt(project, trained_config):
    """A flipped byte in a key still parses as JSON and fails validation, whose own message
    spans lines: training's refusal must be one line naming the file, the key and the fix, and
    that fix (`distill cache`) writes the plan anew."""
    cache = Cache(project.cache)
    plan_file = Path(cache.plan_dir(cache.plan_ids()[0])) / "plan.json"
    original = plan_file.read_bytes()
    plan_file.write_text(plan_file.read_text().replace('"nonfinite"', '"nxnfinite"', 1))
    result = runner.invoke(app, ["train", str(trained_config)])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "plan.json: not a valid Plan (shards.0.nxnfinite: Extra inputs" in line
    assert "distill cache" in line
    assert runner.invoke(app, ["cache", str(trained_config)]).exit_code == 0
    assert plan_file.read_bytes() == original and Cache(project.cache).plan_ids() == cache.plan_ids()


def test_caches_of_another_format_are_listed_never_read_and_removed_by_gc(project, trained_config):
    """A cache root that also holds caches of an older cache format (FORMAT_VERSION): every
    command keeps working on the current ones, inspect names the old ones, `distill gc` removes
    them, and reading one directly says what to do instead of misreading its fields."""
    import shutil

    from distill.storage import FORMAT_VERSION
    from distill.storage.records import OtherFormat

    cache, m = _teacher(project, "a")
    old_teacher, old_plan = Path(cache.teacher_dir("0ld0teacher0000a")), Path(cache.plan_dir("0ld0plan"))
    shutil.copytree(cache.teacher_dir(m.teacher_id), old_teacher)
    shutil.copytree(cache.plan_dir(m.plan_id), old_plan)
    _edit_json(old_teacher / "manifest.json", format_version=FORMAT_VERSION - 1,
               teacher_id="0ld0teacher0000a", plan_id="0ld0plan", columns={"logits": "float"})
    _edit_json(old_plan / "plan.json", format_version=FORMAT_VERSION - 1, plan_id="0ld0plan")
    assert "0ld0teacher0000a" not in cache.teacher_ids() and "0ld0plan" not in cache.plan_ids()
    with pytest.raises(OtherFormat, match=f"cache format {FORMAT_VERSION - 1}.*distill gc"):
        cache.find_manifest("0ld0teacher0000a")
    report = inspect_cache(cache)
    assert {(o["kind"], o["id"]) for o in report["other_formats"]} == {("teacher", "0ld0teacher0000a"),
                                                                    ("plan", "0ld0plan")}
    assert "0ld0teacher0000a" not in {t["teacher_id"] for t in report["teachers"]}
    assert runner.invoke(app, ["cache", str(trained_config)]).exit_code == 0
    assert runner.invoke(app, ["train", str(trained_config)]).exit_code == 0
    removed = runner.invoke(app, ["gc", str(trained_config)])
    assert removed.exit_code == 0 and "cache format" in removed.output, removed.output
    assert not old_teacher.exists() and not old_plan.exists()
    assert cache.find_manifest(m.teacher_id).complete and cache.other_formats() == []
