"""Caches on S3 object storage, against a real server (SeaweedFS on loopback, tests/s3server.py).

The behaviours shared with local caches (atomic publish, damage detection, recompute of corrupt
shards, kill-and-resume of `distill cache`) run on both through the `cache_location` fixture
in test_storage.py and test_flows.py (`pytest -k s3` selects them). Here: what only an object
store can get wrong.
"""

import json
import re
import signal
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import tiny
from distill.flows.caching import cache_teachers
from distill.flows.cli import app
from distill.pipeline.config import load_config
from distill.pipeline.kinds.classification.labels import build_label_space
from distill.pipeline.kinds.classification.stream import ClassificationStream
from distill.pipeline.trainer import train
from distill.storage import FORMAT_VERSION
from distill.storage.aligned import AlignedCache
from distill.storage.cache import Cache
from distill.storage.records import TeacherManifest

pytestmark = pytest.mark.slow


def _manifest(teacher_id: str) -> TeacherManifest:
    return TeacherManifest(teacher_id=teacher_id, name=teacher_id, plan_id="p",
                           format_version=FORMAT_VERSION, code_version="test", fingerprint={},
                           settings={}, arrow_schema=TeacherManifest.encode_schema(pa.schema([])))


def test_a_writer_killed_mid_upload_leaves_nothing_a_reader_opens(s3_cache, s3_server):
    """A big shard goes up as a multipart upload; SIGKILL after its parts are stored, just
    before the upload is completed: the server holds the parts, but no object is visible."""
    code = f"""
import os, signal
import numpy as np, pyarrow as pa, s3fs
from distill.storage.cache import Cache
# The multipart path of shards >= 100 MiB, reached with 5 MiB parts (the S3 minimum).
s3fs.core.calculate_chunksize = lambda size, chunksize=None: 5 * 2**20
call = s3fs.S3FileSystem._call_s3
async def kill_before_completing(self, method, *args, **kwargs):
    if method == "complete_multipart_upload":
        os.kill(os.getpid(), signal.SIGKILL)
    return await call(self, method, *args, **kwargs)
s3fs.S3FileSystem._call_s3 = kill_before_completing
big = np.random.default_rng(0).integers(0, 2**62, 2 * 2**20)   # 16 MiB
Cache({s3_cache!r}).write_shard("t1", 0, pa.table({{"sample_id": big}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    cache = Cache(s3_cache)
    prefix = cache.root.split("/", 1)[1]  # the keys under this cache, without the bucket
    uploads = [u["Key"] for u in cache.fs.list_multipart_uploads(s3_server.bucket)]
    assert [k for k in uploads if k.startswith(prefix)] == [f"{prefix}/teachers/t1/shard-00000.arrow"]
    assert cache.fs.find(cache.root) == []
    assert cache.published_shards("t1") == {}
    table = pa.table({"sample_id": np.arange(10)})
    entry = cache.write_shard("t1", 0, table)  # the next writer is not in the way of anything
    assert cache.shard_problem("t1", entry) is None and cache.read_shard("t1", 0).equals(table)
    cache.fs.clear_multipart_uploads(s3_server.bucket)


def test_listings_follow_what_other_processes_write_and_delete(s3_cache):
    """A long-lived reader (a trainer, `distill inspect`, a flow waiting on workers) sees other
    processes' writes and deletes: s3fs would answer from a listing cached before them."""
    cache = Cache(s3_cache)
    cache.start_teacher(_manifest("t1"))
    first = cache.write_shard("t1", 0, pa.table({"sample_id": [1, 2]}))
    assert cache.teacher_ids() == ["t1"] and list(cache.published_shards("t1")) == [0]
    code = f"""
import pyarrow as pa
from distill.storage.cache import Cache
from distill.storage.records import TeacherManifest
cache = Cache({s3_cache!r})
cache.start_teacher(TeacherManifest.from_json({_manifest("t2").to_json()!r}, "t2"))
cache.write_shard("t1", 1, pa.table({{"sample_id": [3]}}))
cache.fs.rm_file(cache.teacher_dir("t1") + "/shard-00000.arrow")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cache.teacher_ids() == ["t1", "t2"]
    assert list(cache.published_shards("t1")) == [0, 1]
    assert "missing" in cache.shard_problem("t1", first)


@pytest.fixture
def s3_project(project, s3_cache):
    """Two tiny teachers cached on S3 over 90 rows in 4 shards, and a student config."""
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(90, seed=6)])
    config = project.config(cache=s3_cache, corpus={"path": "corpus.jsonl", "rows_per_shard": 25},
                            student={"from_teacher": "a", "layers": 1, "max_length": 16},
                            train={"epochs": 2, "batch_size": 16, "lr": 1e-3, "output": "run-s3"})
    cache_teachers(str(config))
    return project, config


@pytest.fixture
def shard_reads(monkeypatch):
    """Every shard object the code reads, in order."""
    import distill.storage.cache

    reads = []
    read_table = distill.storage.cache.read_table

    def spy(fs, path, **options):
        reads.append(path)
        return read_table(fs, path, **options)

    monkeypatch.setattr(distill.storage.cache, "read_table", spy)
    return reads


@pytest.mark.usefixtures("prefect")
def test_the_reader_fetches_shards_one_window_at_a_time(s3_project, shard_reads):
    project, config = s3_project
    aligned = AlignedCache(Cache(load_config(config).cache), ["a", "b"])
    stream = ClassificationStream(aligned, build_label_space(aligned.manifests), 8, buffer_shards=1)
    batches = stream.epoch(0)
    next(batches)
    assert len(shard_reads) == 3  # one text shard and its two teacher shards, not the cache
    assert len({re.search(r"-(\d+)\.arrow$", p)[1] for p in shard_reads}) == 1  # all shard i
    rest = list(batches)
    assert 1 + len(rest) == stream.batches_per_epoch()
    assert len(shard_reads) == 12 and len(set(shard_reads)) == 12  # each shard once per epoch


@pytest.mark.usefixtures("prefect")
def test_training_streams_from_s3_and_equals_training_from_a_local_copy(s3_project, shard_reads):
    project, config = s3_project
    remote = load_config(config)
    report = train(remote)
    teacher_reads = Counter(p for p in shard_reads if "/teachers/" in p)
    # Each of the 2 x 4 teacher shards fetched once per epoch and once for the final agreement
    # pass over the cache (report: ensemble_agreement), one object at a time, never all upfront.
    assert len(teacher_reads) == 8 and set(teacher_reads.values()) == {remote.train.epochs + 1}
    assert all(p.startswith(remote.cache.removeprefix("s3://")) for p in shard_reads)
    copy = project.root / "copy"
    Cache(remote.cache).fs.get(remote.cache, str(copy), recursive=True)
    local = load_config(config)
    local.cache, local.train.output = str(copy), str(project.root / "run-local")
    assert train(local)["coverage"] == report["coverage"]
    assert report["steps"] == 12 and report["finished"]
    from_s3 = load_file(project.root / "run-s3" / "mean" / "student" / "model.safetensors")
    from_copy = load_file(project.root / "run-local" / "mean" / "student" / "model.safetensors")
    assert from_s3.keys() == from_copy.keys()
    for name in from_s3:
        torch.testing.assert_close(from_copy[name], from_s3[name], rtol=0, atol=0)


@pytest.mark.usefixtures("prefect")
def test_distill_inspect_reads_an_s3_cache(s3_project):
    _, config = s3_project
    location = load_config(config).cache
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", location, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(t["name"], t["rows"], t["complete"]) for t in report["teachers"]] == [
        ("a", 90, True), ("b", 90, True)]
    result = runner.invoke(app, ["inspect", location, "--sql",
                                 "SELECT count(*) AS n FROM a JOIN b USING (plan_id, row)", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"n": 90}]


def test_wrong_keys_are_refused(s3_cache, monkeypatch):
    """The server checks signatures, as a real bucket does: our tests do not pass by accident
    of an open endpoint."""
    Cache(s3_cache).write_shard("t1", 0, pa.table({"sample_id": [1]}))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    with pytest.raises(PermissionError):
        fs.ls(s3_cache.removeprefix("s3://"))
    s3fs.S3FileSystem.clear_instance_cache()      # as in a fresh `distill` process
    try:
        result = CliRunner().invoke(app, ["inspect", s3_cache, "--json"])
    finally:  # forget the client with the wrong secret: later tests must not reuse it
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2
    assert "access denied" in result.output and "AWS_SECRET_ACCESS_KEY" in result.output


@pytest.mark.usefixtures("prefect")
def test_a_store_restarted_mid_run_costs_retries_not_rows(project, tmp_path, monkeypatch):
    """SeaweedFS stopped gracefully and started again right after the first shard lands: it
    refuses connections, then answers 500 while its volumes come back. The shards retry with
    backoff (their OSError used to count as permanent: 7 failed at once) and the run ends with
    every row exactly once and nothing beside the published shards."""
    import s3server

    with s3server.seaweedfs(tmp_path / "weed") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        location = f"s3://{server.bucket}/restarted/cache"
        config = load_config(project.config(cache=location, corpus={"path": "corpus.jsonl",
                                                                    "rows_per_shard": 10}))
        write_shard, restarted = Cache.write_shard, []

        def restart_after_first(self, *args, **kwargs):
            entry = write_shard(self, *args, **kwargs)
            if not restarted and "/teachers/" in self.teacher_dir(args[0]):
                restarted.append(True)
                server.restart()
            return entry

        monkeypatch.setattr(Cache, "write_shard", restart_after_first)
        try:
            [summary] = cache_teachers(config, teachers=["a"])
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
        assert restarted and summary["rows"] == 120 and summary["shards"] == 12
        cache = Cache(location)
        manifest = cache.load_manifest(summary["teacher_id"])
        ids = [i for s in manifest.shards for i in cache.read_shard(summary["teacher_id"], s)
               .column("sample_id").to_pylist()]
        assert len(ids) == len(set(ids)) == 120
        objects = {p.rsplit("/", 1)[1] for p in cache.fs.find(cache.teacher_dir(summary["teacher_id"]))}
        assert objects == {"manifest.json"} | {f"shard-{s.index:05d}.{ext}"
                                               for s in manifest.shards for ext in ("arrow", "json")}


@pytest.mark.usefixtures("prefect")
def test_a_store_that_stays_down_is_one_line_naming_the_store_and_the_shard(project, tmp_path,
                                                                            monkeypatch):
    """The store dies for good after the plan is written: the shards retry, then `distill
    cache` ends with exit status 2 and one line naming the store, the shard and what to check."""
    import distill.flows.caching as caching
    import s3server

    monkeypatch.setattr(caching, "shard_task", caching.shard_task.with_options(
        retries=1, retry_delay_seconds=0))  # the real delays add up to 65 s
    with s3server.seaweedfs(tmp_path / "weed") as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        import s3fs

        location = f"s3://{server.bucket}/down/cache"
        config = project.config(cache=location)
        write_shard = Cache.write_shard

        def die_first(self, *args, **kwargs):
            server.kill()
            return write_shard(self, *args, **kwargs)

        monkeypatch.setattr(Cache, "write_shard", die_first)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            result = CliRunner().invoke(app, ["cache", str(config), "--teacher", "a"])
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())
    assert re.search(rf"error: {location}: shard \d of teacher a could not be written", line), line
    assert "AWS_ENDPOINT_URL" in line and "Traceback" not in result.output
