"""A CDL student as a prompt-based teacher, end to end on tiny models: a prompts-mode student is
trained, cached as a teacher with its prompts (logits + prompt vectors, also over `eval`), and a
second student learns with the attention-based mapping of its prompt vectors, evaluated from the
cache without the teacher ever being loaded; plus the refusals."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import tiny
from distill.flows.cli import app
from distill.pipeline.caches import open_caches
from distill.pipeline.caching import teacher_cache
from distill.pipeline.config import eval_corpus_config, load_config, teacher_config
from distill.pipeline.continual import trainer as continual_trainer
from distill.pipeline.continual.prompts import PromptPool
from distill.pipeline.continual.student import ContinualStudent
from distill.pipeline.continual.teacher_prompts import eval_prompt_vectors
from distill.pipeline.corpus import plan_corpus
from distill.pipeline.kinds.classification.evaluate import predict, read_labelled
from distill.pipeline.kinds.classification.labels import build_label_space
from distill.pipeline.kinds.prompt.teacher import PromptTeacherInference
from distill.storage.cache import Cache
from distill.storage.columns import to_matrix
from distill.storage.records import CacheError

runner = CliRunner()
TASKS = [{"name": "t1", "corpus": {"path": "t1.jsonl", "rows_per_shard": 20}, "labels": ["class0", "class1"]},
         {"name": "t2", "corpus": {"path": "t2.jsonl", "rows_per_shard": 20}, "labels": ["class2", "class3"]}]


def _write(project, name: str, teachers: list[dict], student: dict, output: str, **continual) -> str:
    root = project.root
    if not (root / "eval.jsonl").exists():
        for task, seed in (("t1", 11), ("t2", 12)):
            tiny.write_jsonl(root / f"{task}.jsonl", [{"text": t} for t in tiny.sentences(40, seed=seed)])
        tiny.write_jsonl(root / "eval.jsonl", [{"text": t, "label": f"class{i % 4}"}
                                               for i, t in enumerate(tiny.sentences(24, seed=13))])
    raw = {"cache": "cache", "tasks": TASKS, "teachers": teachers, "student": student,
           "continual": {"pool_size": 4, "prompt_length": 2, "top_k": 2, **continual},
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "head_lr": 1e-2, "output": output},
           "eval": {"path": "eval.jsonl"}}
    (root / name).write_text(yaml.safe_dump(raw))
    return str(root / name)


def _cache(path: str, *tasks: str) -> None:
    for task in tasks:
        result = runner.invoke(app, ["cache", path, "--task", task])
        assert result.exit_code == 0, result.output


PROMPT_TEACHER = [{"name": "p", "model": "cdl/student", "max_length": 16, "batch_size": 8}]
STUDENT = {"model": "teacher-b", "layers": 1, "max_length": 16}


@pytest.fixture
def prompt_teacher(project, prefect):
    """A tiny CDL student trained in prompts mode (teacher a's caches), at cdl/student."""
    first = _write(project, "first.yaml", [{"name": "a", "model": "teacher-a", "max_length": 16,
                                            "batch_size": 8}],
                   {"from_teacher": "a", "layers": 1, "max_length": 16}, "cdl")
    _cache(first, "t1", "t2")
    continual_trainer.train_continual(load_config(first))
    folder = project.root / "cdl" / "student"
    assert (folder / "prompt_pool.safetensors").exists()
    return folder


def test_prompt_teacher_cached_with_its_prompts_and_mapped_into_a_student(project, prompt_teacher,
                                                                         monkeypatch):
    # Logits only first (map_teacher_prompts: false): the tasks are cached, the eval file is not.
    path = _write(project, "second.yaml", PROMPT_TEACHER, STUDENT, "plain", map_teacher_prompts=False)
    _cache(path, "t1", "t2")
    config = load_config(path)
    aligned = open_caches(config.for_task("t1"))
    manifest = aligned.manifests[0]
    assert manifest.schema.field("prompt_vector").type == pa.list_(pa.float16(), 32)
    assert manifest.settings["prompt_pool"] == {"size": 4, "length": 2, "top_k": 2, "dim": 32}
    assert "prompt_pool_sha256" in manifest.fingerprint
    with pytest.raises(CacheError):                       # not cached over eval without mapping
        open_caches(eval_corpus_config(config))

    # The cached values are the teacher run with its prompts: recompute a few rows from the pool.
    teacher = ContinualStudent.load(prompt_teacher).eval()
    shard = aligned.read(0)
    texts = shard.text.column("text").to_pylist()[:5]
    inputs = tiny.tokenizer()(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        chosen = teacher.pool.select(teacher.query(inputs["input_ids"], inputs["attention_mask"]))
        expected = teacher.pool.prompts[chosen.indices].mean((1, 2))
        prompted = teacher(**inputs).logits
        plain = teacher.model(**inputs).logits
    cached = shard.teachers[0]
    np.testing.assert_allclose(to_matrix(cached.column("prompt_vector"))[:5].astype(np.float32),
                               expected.numpy(), rtol=1e-3, atol=1e-3)       # float16
    np.testing.assert_allclose(to_matrix(cached.column("logits"))[:5], prompted.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(prompted.numpy(), plain.numpy(), atol=1e-3)    # the prompts matter

    report = continual_trainer.train_continual(config)
    assert report["mapped_teachers"] == []
    assert not (project.root / "plain" / "student" / "prompt_mapping.safetensors").exists()

    # Mapping on, before the eval file is cached: the error names the fix.
    raw = yaml.safe_load(open(path))
    raw["continual"]["map_teacher_prompts"] = True
    raw["continual"].update(mapping_components=3, mapping_length=2)
    raw["train"]["output"] = "mapped"
    (project.root / "second.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(path)
    with pytest.raises(CacheError, match=r"maps the prompts of teacher\(s\) p.*eval.jsonl.*"
                                         r"`distill cache .*second.yaml --task t1`"):
        continual_trainer.train_continual(config)
    before = {p: p.read_bytes() for p in project.cache.rglob("*.arrow")}
    _cache(path, "t1")                                    # adds the eval cache, rewrites nothing
    after = {p: p.read_bytes() for p in project.cache.rglob("*.arrow")}
    assert {p: after[p] for p in before} == before and len(after) > len(before)
    held_out = open_caches(eval_corpus_config(config))
    assert "prompt_vector" in held_out.manifests[0].columns

    # Train with the mapping, never loading the teacher; record the mapping's initial values.
    initial = {}

    class Recorded(continual_trainer.MappedPrompts):
        def __init__(self, *args):
            super().__init__(*args)
            initial.update({k: v.clone() for k, v in self.state_dict().items()})

    def refuse(*args, **kwargs):
        raise AssertionError("a teacher was loaded during training")

    monkeypatch.setattr(continual_trainer, "MappedPrompts", Recorded)
    monkeypatch.setattr(PromptTeacherInference, "__init__", refuse)
    monkeypatch.setattr(ContinualStudent, "load", refuse)
    report = continual_trainer.train_continual(config)
    monkeypatch.undo()
    assert report["mapped_teachers"] == ["p"] and len(report["matrix"]) == 2
    assert all(0 <= a <= 1 for a in report["matrix"][1])

    folder = project.root / "mapped" / "student"
    saved = load_file(folder / "prompt_mapping.safetensors")
    assert set(saved) == set(initial) and saved["maps.0.keys"].shape == (3, 32)
    assert saved["maps.0.prompts"].shape == (3, 2, 32)
    assert all(not torch.equal(saved[k], initial[k]) for k in initial)     # the mapping learnt
    assert json.loads((folder / "prompt_pool.json").read_text())["mapped_teachers"] == \
        [{"name": "p", "prompt_width": 32}]

    # Reloaded, it reproduces the final accuracy on task 1 from the cached eval prompt vectors.
    student = ContinualStudent.load(folder).eval()
    torch.testing.assert_close(student.mapped.state_dict(), saved)
    texts, gold = read_labelled(config, build_label_space(aligned.manifests, None, {}))
    rows = np.flatnonzero(np.isin(gold, [0, 1, 2, 3]))
    vectors = eval_prompt_vectors(config, ["p"], texts)
    assert vectors.shape == (len(texts), 32) and np.isfinite(vectors).all()
    logits = predict(student, tiny.tokenizer(), [texts[i] for i in rows], 16,
                     per_row={"teacher_prompts": vectors[rows]})
    on_task1 = np.isin(gold[rows], [0, 1])
    assert (logits[on_task1].argmax(1) == gold[rows][on_task1]).mean() == \
        pytest.approx(report["matrix"][1][0])


def test_prompt_teacher_refuses_features_and_a_student_that_maps_prompts(project, prompt_teacher):
    path = _write(project, "bad.yaml", [{**PROMPT_TEACHER[0], "features": {"layer": -1}}], STUDENT, "x")
    config = load_config(path).for_task("t1")
    cache = Cache(config.cache)
    plan = plan_corpus(cache, config.corpus)
    with pytest.raises(ValueError, match=r"teachers\[p\].features: not available for a prompt-based"):
        teacher_cache(cache, plan, config.teachers[0]).start()
    # a student with mapped teacher prompts needs its own teachers' vectors: no teacher
    (prompt_teacher / "prompt_mapping.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="maps its own teachers' prompts"):
        teacher_cache(cache, plan, config.teachers[0].model_copy(update={"features": None})).start()


def test_prompt_teacher_runner_uses_the_students_forward_also_with_mc_dropout(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny.classifier(tmp_path / "m"))
    ContinualStudent(model, PromptPool(size=4, length=2, top_k=2, dim=32, key_dim=32)).save(
        tmp_path / "p", tiny.tokenizer())
    config = teacher_config(name="p", model=str(tmp_path / "p"), max_length=16, batch_size=3,
                           mc_dropout={"passes": 3})
    texts = tiny.sentences(7, seed=5)
    out = PromptTeacherInference(config, tmp_path / "p").run(texts)
    teacher = ContinualStudent.load(tmp_path / "p").eval()
    with torch.no_grad():
        expected = teacher(**tiny.tokenizer()(texts, padding=True, truncation=True, max_length=16,
                                              return_tensors="pt"))
    np.testing.assert_allclose(out.logits, expected.logits.numpy(), rtol=1e-4, atol=1e-5)
    assert out.prompt_vector.dtype == np.float16
    np.testing.assert_allclose(out.prompt_vector, expected.prompt_vector.numpy(), rtol=1e-3, atol=1e-3)
    assert out.mc_probs.shape == (7, 4) and np.allclose(out.mc_probs.sum(1), 1, atol=1e-5)
