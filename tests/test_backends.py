"""Inference backends (pipeline/backends.py): the registry picks each kind's runner, refuses a
backend that is unknown or cannot run a teacher before any model loads, and a backend other
than the default enters the teacher id and the manifest."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import tiny
from distill.flows.caching import cache_teachers
from distill.flows.cli import app
from distill.pipeline.backends import BACKENDS, Backend
from distill.pipeline.caching import teacher_cache
from distill.pipeline.config import ConfigError, load_config
from distill.pipeline.continual.files import POOL_FILE, POOL_SETTINGS
from distill.pipeline.corpus import plan_corpus
from distill.pipeline.kinds.causal_lm.inference import CausalLMInference
from distill.pipeline.kinds.classification.inference import ClassificationInference
from distill.pipeline.kinds.prompt.teacher import PromptTeacherInference
from distill.pipeline.preflight import check_teacher
from distill.pipeline.teacher import identify
from distill.storage.cache import Cache


class TorchCopyRunner(ClassificationInference):
    """The torch classifier under another backend name; counts the shards it runs."""

    shards = 0

    def run(self, texts, seed=0, on_rows=None):
        type(self).shards += 1
        return super().run(texts, seed, on_rows)


@pytest.fixture
def torch_copy(monkeypatch):
    """Registers `torch-copy` for classification (without features) for one test only."""
    monkeypatch.setitem(BACKENDS, ("classification", "torch-copy"),
                        Backend(f"{__name__}:TorchCopyRunner", frozenset({"mc_dropout"})))
    monkeypatch.setattr(TorchCopyRunner, "shards", 0)


def _not_loaded(self, *args):
    raise AssertionError("a model was loaded before the backend was checked")


def test_the_registry_picks_the_torch_runner_of_each_kind(project):
    tiny.causal_lm(project.root / "lm")
    for pool_file in (POOL_FILE, POOL_SETTINGS):  # a prompt-based teacher's folder (fingerprinted)
        (project.root / "teacher-b" / pool_file).write_bytes(b"")
    config = load_config(project.config(teachers=[
        {"name": "a", "model": "teacher-a"}, {"name": "lm", "model": "lm", "kind": "causal-lm"},
        {"name": "p", "model": "teacher-b"}]))
    cache = Cache(config.cache)
    plan = plan_corpus(cache, config.corpus)
    picked = [teacher_cache(cache, plan, t).backend.inference_class() for t in config.teachers]
    assert picked == [ClassificationInference, CausalLMInference, PromptTeacherInference]


def test_an_unknown_backend_is_refused_with_the_key_and_the_choices(project, torch_copy, monkeypatch):
    monkeypatch.setattr(ClassificationInference, "__init__", _not_loaded)
    config = project.config(teachers=[{"name": "a", "model": "teacher-a", "backend": "tensorrt"}])
    result = CliRunner().invoke(app, ["cache", str(config)])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {config}: teachers[a].backend: unknown backend "
                                     "'tensorrt'; choose one of: onnx, torch, torch-copy")


@pytest.mark.parametrize("teacher, message", [
    ({"kind": "causal-lm"}, r"teachers\[a\]\.backend: 'torch-copy' cannot run a causal-lm "
                            r"teacher; backends that can: torch$"),
    ({"features": {"layer": -1}}, r"teachers\[a\]\.backend: 'torch-copy' does not compute features "
                                  r"for a classification teacher; use torch, or remove "
                                  r"teachers\[a\]\.features$"),
])
def test_a_backend_that_cannot_run_a_teacher_is_refused_at_config_load(project, torch_copy, teacher,
                                                                       message):
    config = project.config(teachers=[{"name": "a", "model": "teacher-a", "backend": "torch-copy",
                                       **teacher}])
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_pre_flight_refuses_what_no_backend_of_a_prompt_teacher_computes(project, monkeypatch):
    """Only the folder tells a prompt-based teacher: pre-flight checks its backend by it."""
    monkeypatch.setattr(ClassificationInference, "__init__", _not_loaded)
    (project.root / "teacher-a" / POOL_FILE).write_bytes(b"")
    teacher = load_config(project.config()).teachers[0]
    check_teacher(teacher.model_copy(update={"mc_dropout": {"passes": 2}}), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c\.yaml: teachers\[a\]\.features: not available for "
                                          r"a prompt-based teacher; remove it$"):
        check_teacher(teacher.model_copy(update={"features": {"layer": -1}}), "c.yaml")


def test_the_teacher_id_holds_a_backend_only_when_it_is_not_torch(project, torch_copy):
    teacher = load_config(project.config()).teachers[0]
    default = identify(teacher, "plan", "x")
    torch = identify(teacher.model_copy(update={"backend": "torch"}), "plan", "x")
    other = identify(teacher.model_copy(update={"backend": "torch-copy"}), "plan", "x")
    assert torch == default and "backend" not in default.settings
    assert other.teacher_id != default.teacher_id and other.settings["backend"] == "torch-copy"


@pytest.mark.usefixtures("prefect")
def test_caching_with_another_backend_writes_its_own_cache_that_says_so(project, torch_copy):
    teachers = [{"name": n, "model": "teacher-a", "max_length": 16, "batch_size": 8, **extra}
                for n, extra in (("a", {}), ("copy", {"backend": "torch-copy"}))]
    summaries = cache_teachers(load_config(project.config(teachers=teachers)))
    assert [s["computed"] for s in summaries] == [3, 3] and TorchCopyRunner.shards == 3
    cache = Cache(project.cache)
    manifests = {m.name: m for m in cache.manifests()}
    assert manifests["copy"].settings["backend"] == "torch-copy" and manifests["copy"].complete
    assert "backend" not in manifests["a"].settings
    assert manifests["copy"].teacher_id != manifests["a"].teacher_id
    tables = [cache.read_shard(m.teacher_id, m.shards[0]) for m in manifests.values()]
    for manifest, table in zip(manifests.values(), tables):  # each shard says who wrote it
        settings = json.loads(table.schema.metadata[b"distill"])["settings"]
        assert settings.get("backend") == manifest.settings.get("backend")
    same = [np.stack(t.column("logits").to_numpy()) for t in tables]  # same weights and code
    np.testing.assert_array_equal(*same)
    # a grown corpus: the torch teacher may adopt shards only from torch caches, never the copy's
    shutil.rmtree(cache.teacher_dir(manifests["a"].teacher_id))
    tiny.write_jsonl(project.corpus, [{"text": t} for t in tiny.sentences(150, seed=3)])
    config = load_config(project.config(teachers=teachers))
    grown = plan_corpus(cache, config.corpus)
    torch_teacher, copy_teacher = (teacher_cache(cache, grown, t) for t in config.teachers)
    assert torch_teacher.reuse([0, 1, 2]) == [0, 1, 2]
    assert copy_teacher.reuse([0, 1, 2]) == [2]  # the first two text shards are unchanged
