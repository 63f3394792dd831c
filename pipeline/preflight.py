"""Checks of a config's inputs that need no model, no corpus read and no Prefect server.

The commands run them first, so a missing file or folder, a model that would run custom code,
or a student that cannot be cut from its teacher is reported in well under a second, before any
flow starts. Nothing here imports torch, transformers or `datasets`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from distill.pipeline.config import ConfigError, CorpusConfig, DistillConfig, TeacherConfig
from distill.pipeline.corpus import data_files, is_saved_dataset
from distill.pipeline.labels import check_label_map
from distill.pipeline.teacher import resolve_model_dir

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def check_corpus(corpus: CorpusConfig, key: str, where: str) -> None:
    """A local corpus exists, is of a kind we read, holds data and can be read (object-store
    URLs are checked when read)."""
    if "://" in corpus.path:
        return
    path = Path(corpus.path)
    if not path.exists():
        raise ConfigError(f"{where}: {key}.path: {path} does not exist; point it at a jsonl, csv, "
                          "parquet or text file, a folder of them, or a saved dataset")
    if is_saved_dataset(path):
        return
    try:
        files = data_files(path)
    except ConfigError as e:
        raise ConfigError(f"{where}: {key}.path: {e}") from None
    except PermissionError:
        files = [path]
    unreadable = [p for p in [path, *files] if not os.access(p, os.R_OK)]
    if unreadable:
        raise ConfigError(f"{where}: {key}.path: cannot read {unreadable[0]}; check its permissions")


def check_teacher(teacher: TeacherConfig, where: str) -> dict:
    """The teacher's folder has a config.json, which is returned; one that names custom code
    (auto_map) is refused unless the config trusts it, so no code is executed by default. Its
    label_map names only classes of its id2label (the classes its cache will record)."""
    folder = resolve_model_dir(teacher.model, where)
    settings = json.loads((folder / "config.json").read_text())
    if settings.get("auto_map") and not teacher.trust_remote_code:
        raise ConfigError(f"{where}: teachers[{teacher.name}].model: {folder} ships custom model "
                          f"code (auto_map in config.json), which is never run by default; set "
                          f"teachers[{teacher.name}].trust_remote_code: true if you trust it")
    classes = settings.get("id2label")
    if teacher.label_map and classes:  # without id2label, training checks the cached classes
        check_label_map(teacher.name, teacher.label_map,
                        [classes[k] for k in sorted(classes, key=int)], where)
    return settings


def check_inputs(config: DistillConfig, teachers: list[str] | None = None) -> None:
    """The corpus (or every task's), the named teachers (default all) and the student's model."""
    where = config.source
    if config.corpus is not None:
        check_corpus(config.corpus, "corpus", where)
    for task in config.tasks or []:
        check_corpus(task.corpus, f"tasks[{task.name}].corpus", where)
    for name in teachers or [t.name for t in config.teachers]:
        check_teacher(config.teacher(name), where)
    student = config.student
    if student and student.model:
        resolve_model_dir(student.model, f"{where}: student.model")
    if student and student.from_teacher and student.layers:
        _check_layers(config, student.from_teacher, student.layers)


def _check_layers(config: DistillConfig, teacher: str, layers: int) -> None:
    settings = check_teacher(config.teacher(teacher), config.source)
    total = next((settings[k] for k in LAYER_KEYS if k in settings), None)
    if total is not None and layers > total:
        raise ConfigError(f"{config.source}: student.layers: {layers} exceeds the {total} layers of "
                          f"teacher '{teacher}' (student.from_teacher); keep at most {total}")


def check_method(config: DistillConfig, method: str | None) -> None:
    """The training method (--method or train.method) and its options exist for these teachers
    (imports torch: run it only for training)."""
    train = config.train
    name = method or (train.method if train else "mean")
    options = train.method_options if train else {}
    if any(t.kind == "causal-lm" for t in config.teachers):
        from distill.pipeline.lm_methods import make_token_method as make
    else:
        from distill.pipeline.methods import make_method as make
    try:
        make(name, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{config.source}: {'--method' if method else 'train.method'}: {e}") from None
