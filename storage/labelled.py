"""A labelled file for `distill inspect --labels`: gold labels keyed by sample id.

Rows are matched to cached rows by `sample_id` (the hash of the normalised text), so the file
may be the eval set, a labelled slice of the corpus, or any other texts the teachers have seen;
unmatched rows are simply not counted. Read with pyarrow only (no `datasets`), so it works
from the base install.
"""

from __future__ import annotations

import io
import json
import os
from functools import partial

import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet

from distill.storage.fs import resolve
from distill.storage.ids import sample_id
from distill.storage.records import CacheError


def _read_json(f) -> dict[str, list]:
    """JSON lines, or one JSON array of objects; read with `json` because labels may mix
    names and indices, which pyarrow's typed JSON reader refuses."""
    text = io.TextIOWrapper(f, encoding="utf-8").read()
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise pa.ArrowInvalid(str(e)) from e
    columns = dict.fromkeys(k for row in rows for k in row)
    return {c: [row.get(c) for row in rows] for c in columns}


def _read_csv(f, delimiter: str = ",") -> dict[str, list]:
    options = pyarrow.csv.ParseOptions(delimiter=delimiter)
    return pyarrow.csv.read_csv(f, parse_options=options).to_pydict()


_READERS = {
    ".jsonl": _read_json,
    ".json": _read_json,
    ".csv": _read_csv,
    ".tsv": partial(_read_csv, delimiter="\t"),
    ".parquet": lambda f: pyarrow.parquet.read_table(f).to_pydict(),
}


def read_labels(path: str | os.PathLike, label_column: str = "label",
                text_column: str = "text") -> dict[int, object]:
    """{sample_id: label} from a .jsonl, .json (lines or an array of objects), .csv, .tsv or
    .parquet file; rows without text or label are left out."""
    path = str(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _READERS:
        raise CacheError(f"{path}: labelled files must be one of {', '.join(_READERS)}")
    fs, location = resolve(path)
    if not fs.exists(location):
        raise CacheError(f"{path}: labelled file does not exist; pass --labels FILE with "
                         "a text column and a label column")
    try:
        with fs.open(location, "rb") as f:
            columns = _READERS[suffix](f)
    except pa.ArrowInvalid as e:
        raise CacheError(f"{path}: cannot be read as {suffix} ({e})") from e
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise CacheError(f"{path}: no column {', '.join(repr(c) for c in missing)} (columns: "
                         f"{', '.join(columns)}); set --text-column / --label-column")
    labels = {}
    for text, label in zip(columns[text_column], columns[label_column]):
        if isinstance(text, str) and text.strip() and label is not None:
            labels[sample_id(text)] = label
    return labels
