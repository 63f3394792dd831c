"""Real Prefect flow runs (embedded local mode) over tiny teachers: the cache's promises, on a
local folder and (`cache_location`) on a real S3 server."""

import gc
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
from prefect.artifacts import Artifact
from transformers import PreTrainedModel

import tiny
from distill.flows.artifacts import cache_keys, report_key
from distill.flows.caching import cache_teacher, cache_teachers
from distill.flows.inspection import inspect_cache as inspect_cache_flow
from distill.inspection.report import inspect_cache
from distill.pipeline.caching import NonFiniteOutput
from distill.pipeline.config import ConfigError
from distill.storage.cache import Cache
from distill.storage.fs import is_local, join

pytestmark = pytest.mark.usefixtures("prefect")


def _shards(cache: Cache, teacher_id: str) -> dict[str, tuple[bytes, object]]:
    """File name -> (bytes, modification time) of a teacher's shard files and entries."""
    paths = sorted(cache.fs.glob(join(cache.teacher_dir(teacher_id), "shard-*")))
    return {os.path.basename(p): (cache.fs.cat_file(p), cache.fs.modified(p)) for p in paths}


def _tick(cache: Cache) -> None:
    """Object stores keep modification times to the second: let one pass, so that a rewrite
    of an untouched file would show in `_shards`."""
    if not is_local(cache.fs):
        time.sleep(1.1)


def _all_ids(cache: Cache, teacher_id: str) -> list[int]:
    return [i for idx in sorted(cache.published_shards(teacher_id))
            for i in cache.read_shard(teacher_id, idx).column("sample_id").to_pylist()]


def _plan_ids(cache: Cache, plan_id: str) -> list[int]:
    plan = cache.load_plan(plan_id)
    return [i for k in range(len(plan.shards))
            for i in cache.read_text_shard(plan, k).column("sample_id").to_pylist()]


def _loaded_models() -> int:
    gc.collect()
    return sum(issubclass(type(o), PreTrainedModel) for o in gc.get_objects())


def test_a_finished_teacher_leaves_no_model_loaded(project):
    # Prefect keeps the task runs' parameters (our TeacherCache objects); a model held by them
    # stays in memory for every later teacher, and is freed only while the interpreter exits,
    # from whichever thread drops it last, which made torch abort the process.
    before = _loaded_models()
    cache_teachers(str(project.config()))
    assert _loaded_models() == before


def test_cache_teachers_writes_aligned_complete_caches(project, cache_location):
    summaries = cache_teachers(str(project.config(cache=cache_location)), max_parallel=2)
    assert [s["computed"] for s in summaries] == [3, 3]
    cache = Cache(cache_location)
    plan_ids = _plan_ids(cache, summaries[0]["plan_id"])
    assert len(plan_ids) == 120
    for s in summaries:
        manifest = cache.load_manifest(s["teacher_id"])
        assert manifest.complete and [e.rows for e in manifest.shards] == [50, 50, 20]
        assert manifest.fingerprint["weights_sha256"] and manifest.settings["max_length"] == 16
        assert _all_ids(cache, s["teacher_id"]) == plan_ids  # every row once, in plan order
        meta = json.loads(cache.read_shard(s["teacher_id"], 0).schema.metadata[b"distill"])
        assert meta["teacher_id"] == s["teacher_id"] and meta["plan_id"] == s["plan_id"]
    report = inspect_cache(cache)
    assert [t["complete"] for t in report["teachers"]] == [True, True]
    assert 0 <= report["agreement"][0]["agreement"] <= 1 and report["agreement"][0]["rows"] == 120
    summary = summaries[1]  # and the Prefect artifacts of teacher b, read back through the client
    manifest = cache.load_manifest(summary["teacher_id"])
    table_key, summary_key = cache_keys(manifest)
    table = Artifact.get(table_key)
    assert table.type == "table" and table.flow_run_id is not None
    rows = json.loads(table.data)
    assert [(r["shard"], r["rows"], r["sha256"]) for r in rows] == [
        (e.index, e.rows, e.sha256[:16]) for e in manifest.shards] and len(rows) == 3
    markdown = Artifact.get(summary_key).data
    assert f"`{summary['teacher_id']}`" in markdown and "| rows | 120 " in markdown
    assert "| shards | 3 (3 computed, 0 recomputed in this run) |" in markdown
    assert "| mean entropy | " in markdown and "| most predicted labels | class" in markdown

    # the inspect-cache flow publishes the whole report, table by table
    inspected = inspect_cache_flow(cache_location)
    assert inspected["agreement"] == report["agreement"]
    page = Artifact.get(report_key(cache)).data
    assert page.startswith(f"# Cache `{cache_location}`") and "## teachers" in page
    assert page.count(f"| {manifest.teacher_id} |") == 1 and "## argmax agreement, plan" in page


def test_rerun_of_a_finished_cache_does_no_teacher_work(project, cache_location):
    config = project.config(cache=cache_location)
    cache = Cache(cache_location)
    first = cache_teacher(str(config), "a")
    before = _shards(cache, first["teacher_id"])
    _tick(cache)
    second = cache_teacher(str(config), "a")
    assert second["computed"] == 0 and second["teacher_id"] == first["teacher_id"]
    assert _shards(cache, first["teacher_id"]) == before  # same bytes, untouched files


def test_truncated_or_corrupt_shards_are_recomputed(project, cache_location):
    config = project.config(cache=cache_location)
    cache = Cache(cache_location)
    tid = cache_teacher(str(config), "a")["teacher_id"]
    before = _shards(cache, tid)
    one, two = (join(cache.teacher_dir(tid), f"shard-0000{i}.arrow") for i in (1, 2))
    cache.fs.pipe_file(one, cache.fs.cat_file(one)[:-100])               # truncated
    corrupt = bytearray(cache.fs.cat_file(two))
    corrupt[-64] ^= 0x5A
    cache.fs.pipe_file(two, bytes(corrupt))                              # same size, bad bytes
    _tick(cache)
    again = cache_teacher(str(config), "a")
    assert again["computed"] == 2 and again["recomputed"] == 2
    after = _shards(cache, tid)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert after["shard-00000.arrow"][1] == before["shard-00000.arrow"][1]  # shard 0 untouched


def test_new_weights_or_settings_give_a_new_teacher_id(project):
    base = cache_teacher(str(project.config()), "a")
    tiny.classifier(project.root / "teacher-a", seed=99)  # retrained in place
    retrained = cache_teacher(str(project.config()), "a")
    longer = cache_teacher(str(project.config("long.yaml", teachers=[
        {"name": "a", "model": "teacher-a", "max_length": 32}])), "a")
    ids = {base["teacher_id"], retrained["teacher_id"], longer["teacher_id"]}
    assert len(ids) == 3 and retrained["computed"] == 3
    cache = Cache(project.cache)
    old = cache.read_shard(base["teacher_id"], 0).column("logits")
    new = cache.read_shard(retrained["teacher_id"], 0).column("logits")
    assert not old.equals(new)  # outputs never mixed: the old cache is still the old model's
    assert cache.load_manifest(base["teacher_id"]).complete


def test_nan_teacher_is_refused_with_a_clear_error_and_nothing_lost(project):
    tiny.classifier(project.root / "teacher-a", nan=True)
    with pytest.raises(NonFiniteOutput, match=r"teacher 'a' .*NaN/inf for 50 rows of shard 0.*on_nonfinite"):
        cache_teacher(str(project.config()), "a")
    config = project.config(teachers=[{"name": "a", "model": "teacher-a", "on_nonfinite": "skip"}])
    summary = cache_teacher(str(config), "a")
    reports = {t["teacher_id"]: t for t in inspect_cache(Cache(project.cache))["teachers"]}
    assert reports[summary["teacher_id"]]["nonfinite_rows"] == 120
    assert reports[summary["teacher_id"]]["rows"] == 120 and len(reports) == 2
    failed = next(t for tid, t in reports.items() if tid != summary["teacher_id"])
    assert not failed["complete"] and failed["rows"] == 0  # the refused run is visible as such
    logits = Cache(project.cache).read_shard(summary["teacher_id"], 0).column("logits")
    assert logits.null_count == 50


def test_bad_config_and_missing_model_are_clear_errors(project):
    with pytest.raises(ConfigError, match=r"teachers\.0\.dropout: unknown key"):
        cache_teachers(str(project.config(teachers=[{"name": "a", "model": "teacher-a", "dropout": 1}])))
    with pytest.raises(ConfigError, match=r"teachers\[a\]\.model: model path .*nowhere does not exist"):
        cache_teachers(str(project.config(teachers=[{"name": "a", "model": "./nowhere"}])))
    with pytest.raises(ConfigError, match="no teacher named 'zzz'"):
        cache_teachers(str(project.config()), teachers=["zzz"])


def test_long_texts_are_truncated_and_counted(project):
    tiny.write_jsonl(project.corpus, [{"text": " ".join(["cat"] * n)} for n in (3, 40, 5, 60)])
    summary = cache_teacher(str(project.config()), "a")
    manifest = Cache(project.cache).load_manifest(summary["teacher_id"])
    assert manifest.shards[0].truncated == 2
    shard = Cache(project.cache).read_shard(summary["teacher_id"], 0)
    assert shard.column("truncated").to_pylist() == [False, True, False, True]
    assert inspect_cache(Cache(project.cache))["teachers"][0]["truncated_rows"] == 2


@pytest.mark.slow
def test_sigkill_mid_shard_then_resume_gives_every_row_exactly_once(project, tmp_path, cache_location):
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(600, seed=8)])
    config = project.config(cache=cache_location,
                            corpus={"path": "corpus.jsonl", "rows_per_shard": 150}, teachers=[
        {"name": "a", "model": "teacher-a", "batch_size": 4, "mc_dropout": {"passes": 24}}])
    cache = Cache(cache_location)
    # The S3 endpoint and keys reach the run as they reach a user's: AWS_* in the environment.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "distill.flows.cli", "cache", str(config)]
    # Its own process group, so the kill also takes Prefect's embedded server with it.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # Generous: the CLI gives its embedded Prefect server 180 s to start on a loaded machine.
    deadline = time.time() + 420
    # Another process writes: this also proves that our listings are never stale.
    while not cache.fs.glob(join(cache.root, "teachers", "*", "shard-00000.json")):
        assert proc.poll() is None and time.time() < deadline, "caching never published shard 0"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [tid] = cache.teacher_ids()
    folder = cache.teacher_dir(tid)
    published = {p: cache.fs.cat_file(p) for p in cache.fs.glob(join(folder, "shard-*.arrow"))}
    assert 1 <= len(published) < 4  # killed part-way
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    manifest = cache.load_manifest(tid)
    assert manifest.complete and len(manifest.shards) == 4
    assert _all_ids(cache, tid) == _plan_ids(cache, manifest.plan_id)
    for path, data in published.items():
        assert cache.fs.cat_file(path) == data  # published shards byte-identical
    assert not cache.fs.glob(join(folder, "*.tmp"))
    table = pa.concat_tables(cache.read_shard(tid, i) for i in range(4))
    assert table.num_rows == 600
    assert np.isfinite(np.stack(table.column("mc_probs").to_numpy(zero_copy_only=False))).all()


def test_cache_on_an_fsspec_url(project):
    """Any fsspec URL works as a cache root; memory:// goes through the upload path."""
    config = project.config(cache="memory://distill-test/cache")
    summary = cache_teacher(str(config), "a")
    cache = Cache("memory://distill-test/cache")
    assert cache.load_manifest(summary["teacher_id"]).complete
    assert _all_ids(cache, summary["teacher_id"]) == _plan_ids(cache, summary["plan_id"])
    assert cache_teacher(str(config), "a")["computed"] == 0
    entry = cache.published_shards(summary["teacher_id"])[1]
    path = f"{cache.teacher_dir(summary['teacher_id'])}/{entry.file}"
    cache.fs.pipe_file(path, cache.fs.cat_file(path)[:-10])
    assert cache_teacher(str(config), "a")["recomputed"] == 1
    assert inspect_cache(cache)["teachers"][0]["complete"]
