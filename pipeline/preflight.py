"""Checks of a config's inputs that need no model, no Prefect server and no more of the corpus
than its first usable row.

The commands run them first, so a missing file or folder, a corpus without text, a model that
would run custom code, or a student that cannot be cut from its teacher is reported in well
under a second, before any flow starts. Nothing here imports torch, transformers or `datasets`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from distill.pipeline.backends import backend_for
from distill.pipeline.config import (
    ConfigError,
    CorpusConfig,
    DistillConfig,
    TeacherConfig,
    eval_corpus_config,
)
from distill.pipeline.corpus import BUILDERS, data_files, is_saved_dataset
from distill.pipeline.folders import resolve_model_dir
from distill.pipeline.kinds import kind_of, make_method, training_kind
from distill.pipeline.kinds.classification.labels import check_label_map
from distill.storage.plan import skip_reason

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def check_corpus(corpus: CorpusConfig, key: str, where: str) -> None:
    """A local corpus exists, is of a kind we read, can be read and holds text (object-store
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
    for column, name in ((corpus.text_column, "text_column"), (corpus.pair_column, "pair_column")):
        if column is not None and not has_text(files, column):
            raise ConfigError(f"{where}: {key}.path: no row of {path} has text in column "
                              f"'{column}' (every one is blank, missing or not text); point "
                              f"it at a corpus with text or set {key}.{name}")
    if corpus.group_column and not has_text(files, corpus.group_column, accept=_any_value):
        raise ConfigError(f"{where}: {key}.path: no row of {path} has a value in column "
                          f"'{corpus.group_column}'; set {key}.group_column to the query id column")


def _any_value(value: object) -> bool:
    return value is not None and str(value).strip() != ""


def has_text(files: list[Path], column: str, accept=lambda v: skip_reason(v) is None) -> bool:
    """Whether some row of `files` has a sample in `column` (storage/plan.py's definition;
    `accept` another test of a value), reading only up to the first one. A file this scan
    cannot parse, or a kind it does not scan, counts as having text: the corpus reader reads
    it the way training will and reports what is wrong, so this check never refuses a corpus
    that reader would take."""
    scanners = [SCANNERS.get(BUILDERS[f.suffix]) for f in files]
    if None in scanners:
        return True
    try:
        return any(accept(value)
                   for file, scan in zip(files, scanners) for value in scan(file, column))
    except (ValueError, OSError, pa.ArrowException):
        return True


def _json_values(file: Path, column: str) -> Iterator[object]:
    """JSON lines; a file of one JSON document (not lines of objects) raises ValueError."""
    with file.open(encoding="utf-8") as lines:
        for line in filter(str.strip, lines):
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{file} is not JSON lines")
            yield row.get(column)


def _csv_values(file: Path, column: str) -> Iterator[object]:
    """The column read as text, never as numbers or dates, so no value that the `datasets` csv
    reader (pandas) keeps as text is taken for something else."""
    reader = pa_csv.open_csv(
        file, parse_options=pa_csv.ParseOptions(delimiter="\t" if file.suffix == ".tsv" else ","),
        convert_options=pa_csv.ConvertOptions(column_types={column: pa.string()}))
    found = reader.schema.get_all_field_indices(column)
    for batch in reader if found else []:
        yield from batch.column(found[0]).to_pylist()


def _text_values(file: Path, column: str) -> Iterator[object]:
    """One row per line, in the only column a text file has: `text`."""
    if column == "text":
        with file.open(encoding="utf-8") as lines:
            yield from lines


def _parquet_values(file: Path, column: str) -> Iterator[object]:
    parquet = pq.ParquetFile(file)
    if column in parquet.schema_arrow.names:
        for batch in parquet.iter_batches(columns=[column]):
            yield from batch.column(0).to_pylist()


SCANNERS = {"json": _json_values, "csv": _csv_values, "text": _text_values, "parquet": _parquet_values}


def check_teacher(teacher: TeacherConfig, where: str) -> dict:
    """The teacher's folder has a config.json, which is returned; one that names custom code
    (auto_map) is refused unless the config trusts it, so no code is executed by default. Its
    backend runs its kind (which, for a prompt-based teacher, only its files tell) with its
    options. Its label_map names only classes of its id2label (the classes its cache will
    record)."""
    folder = resolve_model_dir(teacher.model, where)
    backend_for(teacher, kind_of(teacher, f"{where}: teachers[{teacher.name}].model").name, where)
    settings = json.loads((folder / "config.json").read_text())
    if settings.get("auto_map") and not teacher.trust_remote_code:
        raise ConfigError(f"{where}: teachers[{teacher.name}].model: {folder} ships custom model "
                          f"code (auto_map in config.json), which is never run by default; set "
                          f"teachers[{teacher.name}].trust_remote_code: true if you trust it")
    classes = settings.get("id2label")
    label_map = getattr(teacher, "label_map", None)   # a key of classification teachers only
    if label_map and classes:  # without id2label, training checks the cached classes
        check_label_map(teacher.name, label_map,
                        [classes[k] for k in sorted(classes, key=int)], where)
    return settings


def check_inputs(config: DistillConfig, teachers: list[str] | None = None) -> None:
    """The corpus (or every task's), the eval file, the named teachers (default all) and the
    student's model."""
    where = config.source
    if config.corpus is not None:
        check_corpus(config.corpus, "corpus", where)
    for task in config.tasks or []:
        check_corpus(task.corpus, f"tasks[{task.name}].corpus", where)
    if config.eval is not None:  # cached like a corpus by `distill cache`, so checked like one
        check_corpus(eval_corpus_config(config).corpus, "eval", where)
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
    kind = training_kind(config.teachers, config.source)
    try:
        make_method(kind.name, name, **options)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{config.source}: {'--method' if method else 'train.method'}: {e}") from None
