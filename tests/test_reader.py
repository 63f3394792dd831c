"""The aligned reader: alignment checks, deterministic shuffles, rank splits, resume."""

import threading
import time

import numpy as np
import pytest

import tiny
from distill.flows.caching import cache_teachers
from distill.pipeline.config import ConfigError
from distill.pipeline.kinds.classification.labels import build_label_space
from distill.pipeline.kinds.classification.stream import ClassificationStream as Stream
from distill.pipeline.stream import prefetch
from distill.storage.aligned import AlignedCache
from distill.storage.cache import Cache
from distill.storage.records import CacheError

pytestmark = pytest.mark.usefixtures("prefect")


@pytest.fixture
def cached(project):
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(130, seed=4)])
    config = project.config(corpus={"path": "corpus.jsonl", "rows_per_shard": 20})
    cache_teachers(str(config))
    aligned = AlignedCache(Cache(project.cache), ["a", "b"])
    return project, aligned, build_label_space(aligned.manifests)


def _ids(stream, epoch, start=0):
    return [i for b in stream.epoch(epoch, start) for i in b.sample_ids.tolist()]


def test_batches_carry_aligned_teacher_logits(cached):
    project, aligned, labels = cached
    stream = Stream(aligned, labels, batch_size=16, shuffle=False)
    batch = next(stream.epoch(0))
    assert batch.teachers.logits.shape == (16, 2, 4) and batch.teachers.valid.all()
    first = Cache(project.cache).read_shard(aligned.manifests[1].teacher_id, 0)
    np.testing.assert_allclose(batch.teachers.logits[:, 1].numpy(),
                               np.stack(first.column("logits").to_pylist())[:16], rtol=1e-6)
    assert batch.sample_ids.tolist() == first.column("sample_id").to_pylist()[:16]
    assert batch.texts[0] == Cache(project.cache).read_text_shard(aligned.plan, 0).column("text")[0].as_py()


@pytest.mark.parametrize("grouped", [False, True])
def test_shuffle_is_a_function_of_seed_and_epoch(cached, grouped):
    _, aligned, labels = cached
    plan_order = [i for s in range(len(aligned)) for i in
                  aligned.read(s).text.column("sample_id").to_pylist()]
    a = Stream(aligned, labels, batch_size=16, seed=1, group_by_length=grouped)
    e0, e1 = _ids(a, 0), _ids(a, 1)
    assert sorted(e0) == sorted(e1) == sorted(plan_order) and e0 != e1 != plan_order
    assert _ids(Stream(aligned, labels, batch_size=16, seed=1, group_by_length=grouped), 0) == e0
    assert _ids(Stream(aligned, labels, batch_size=16, seed=2, group_by_length=grouped), 0) != e0
    assert _ids(a, 1, start=3) == e1[3 * 16:]  # resume mid-epoch = the same remaining batches


def test_length_grouping_makes_batches_of_similar_length(cached):
    _, aligned, labels = cached

    def spread(stream):   # mean over batches of (longest - shortest text), in characters
        return np.mean([np.ptp([len(t) for t in b.texts]) for b in stream.epoch(0)])

    plain = spread(Stream(aligned, labels, batch_size=8, seed=1))
    grouped = spread(Stream(aligned, labels, batch_size=8, seed=1, group_by_length=True))
    assert grouped < plain / 2, (grouped, plain)


@pytest.mark.parametrize("grouped", [False, True])
def test_two_ranks_see_every_row_once_per_epoch_with_equal_step_counts(cached, grouped):
    _, aligned, labels = cached
    ranks = [Stream(aligned, labels, batch_size=16, seed=3, rank=r, world=2,
                         group_by_length=grouped) for r in (0, 1)]
    assert ranks[0].batches_per_epoch() == ranks[1].batches_per_epoch() == 5  # 65 rows each
    real = []
    for stream in ranks:
        for b in stream.epoch(0):
            real += [i for i, w in zip(b.sample_ids.tolist(), b.weights.tolist()) if w == 1]
    single = _ids(Stream(aligned, labels, batch_size=16, seed=3, group_by_length=grouped), 0)
    assert sorted(real) == sorted(single) and len(real) == 130


def test_incomplete_or_mismatched_caches_are_refused_by_name(cached):
    project, aligned, _ = cached
    folder = project.cache / "teachers" / aligned.manifests[0].teacher_id
    (folder / "shard-00003.arrow").write_bytes(b"x")
    with pytest.raises(CacheError, match=r"teacher cache 'a'.*shard-00003\.arrow has 1 bytes"):
        AlignedCache(Cache(project.cache), ["a", "b"])
    with pytest.raises(CacheError, match="no teacher cache named or with id 'zzz'"):
        AlignedCache(Cache(project.cache), ["zzz"])
    other = project.config("other.yaml", corpus={"path": "corpus.jsonl", "rows_per_shard": 30},
                           teachers=[{"name": "c", "model": "teacher-b"}])
    cache_teachers(str(other))
    with pytest.raises(CacheError, match="different corpus plans"):
        AlignedCache(Cache(project.cache), ["b", "c"])


def test_label_maps_place_teacher_classes_in_the_student_space(cached):
    _, aligned, _ = cached
    labels = build_label_space(aligned.manifests, ["class3", "x", "class0", "class1", "class2", "y"],
                               {"b": {"class0": "x", "class1": "y", "class2": "class2", "class3": "class3"}})
    assert labels.maps[0].tolist() == [2, 3, 4, 0] and labels.maps[1].tolist() == [1, 5, 4, 0]
    assert labels.covered.tolist()[1] == [True, True, False, False, True, True]
    with pytest.raises(ConfigError, match=r"teacher 'a' predicts \['class3'\]"):
        build_label_space(aligned.manifests, ["class0", "class1", "class2"])


def test_prefetch_stopped_early_leaves_no_worker_behind():
    before = threading.active_count()
    batches = prefetch(iter(range(100)), depth=2)
    assert next(batches) == 0
    time.sleep(0.1)           # the worker fills the queue and blocks on put
    batches.close()           # what a loop that stops early does to it
    assert threading.active_count() == before


def test_prefetch_keeps_order_and_reraises_errors():
    assert list(prefetch(iter(range(10)))) == list(range(10))

    def broken():
        yield 1
        raise RuntimeError("shard gone")
    with pytest.raises(RuntimeError, match="shard gone"):
        list(prefetch(broken()))
