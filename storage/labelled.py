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
                text_column: str = "text", pair_column: str | None = None) -> dict[int, object]:
    """{sample_id: label} from a .jsonl, .json (lines or an array of objects), .csv, .tsv or
    .parquet file; rows without text or label are left out. With `pair_column`, a row is the
    pair (text, pair), matched to a pair corpus's rows by the pair's sample id."""
    return read_labelled(path, label_column, text_column, pair_column)[0]


def read_labelled(path: str | os.PathLike, label_column: str = "label", text_column: str = "text",
                  pair_column: str | None = None,
                  group_column: str | None = None) -> tuple[dict[int, object], dict[int, str] | None]:
    """({sample_id: label}, {sample_id: query group} with `group_column`, else None): the
    labels of `read_labels` and the groups `distill inspect --labels` ranks by."""
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
    wanted = [c for c in (text_column, label_column, pair_column, group_column) if c is not None]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise CacheError(f"{path}: no column {', '.join(repr(c) for c in missing)} (columns: "
                         f"{', '.join(columns)}); set --text-column / --label-column / "
                         "--pair-column / --group-column")
    rows = len(columns[text_column])
    pairs = columns[pair_column] if pair_column else [None] * rows
    group_values = columns[group_column] if group_column else [None] * rows
    labels, groups = {}, {}
    for text, pair, group, label in zip(columns[text_column], pairs, group_values,
                                        columns[label_column]):
        if not _is_text(text) or label is None or (pair_column and not _is_text(pair)):
            continue
        key = sample_id(text, pair)
        labels[key] = label
        if group_column and group is not None:
            groups[key] = str(group)
    return labels, groups if group_column else None


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())
