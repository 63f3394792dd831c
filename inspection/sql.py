"""SQL over a cache with DuckDB: the corpus text and every teacher are views.

- `texts`: plan_id, shard, row, sample_id, text, pair, group (every plan's text shards; `pair`
  and `group` are the second text and query group of a pair corpus, null for single texts).
- one view per teacher, named after it, over its current cache of every corpus (a pool and an
  eval set: one view); where a name has several caches of one corpus (re-cached with new weights
  or settings), the current one is that of the config given with `--config`, else the newest
  complete one, and each other one is a view of its own, `name@<teacher-id prefix>`
  (inspection/report.py, `name_caches`): plan_id, shard, row, sample_id, its cached columns,
  and for classification caches `pred` (argmax class index), `label` (its name), `confidence`
  (top-1 probability), `margin` and `entropy` (normalised H/log C). Failed rows are null.

Join views on (plan_id, row): exact even when a corpus repeats a text; `sample_id` is the same
for the same text in every corpus. Shards are Arrow IPC stream files, which DuckDB does not scan
itself: they are memory-mapped with pyarrow and registered as Arrow views. DuckDB has no
float16, so float16 columns (`logits` cached as float16, top-k log-probs) are converted to
float32, and `features` (float16 hidden states, large, not useful in SQL) are left out.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from distill.inspection.report import class_names, confidence, name_caches, probabilities
from distill.storage.cache import Cache
from distill.storage.columns import to_matrix
from distill.storage.records import ShardEntry, TeacherManifest

LEFT_OUT = ("features",)


class SqlError(ValueError):
    """A query DuckDB refused; the message lists the views and their columns."""


def run_sql(cache: Cache, query: str, teachers: list[str] | None = None,
            used: set[str] | None = None) -> pa.Table:
    con = connect(cache, teachers, used)
    try:
        result = con.sql(query)
    except duckdb.Error as e:
        raise SqlError(f"SQL failed: {e}\nviews (quote names that are not plain identifiers, "
                       f'e.g. "teacher-a"):\n{describe(con)}\nexamples: docs/operations.md, '
                       "'SQL over a cache'") from e
    return result.fetch_arrow_table() if result is not None else pa.table({})


def connect(cache: Cache, teachers: list[str] | None = None,
            used: set[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the `texts` view and one view per teacher (`used`:
    the teacher ids of a config, whose caches are the current ones)."""
    con = duckdb.connect()
    plans = {p.plan_id: p for p in cache.plans()}
    con.register("texts", _concat([_text_table(cache, plan, i) for plan in plans.values()
                                   for i in range(len(plan.shards))],
                                  pa.schema([("plan_id", pa.string()), ("shard", pa.int32()),
                                             ("row", pa.int64()), ("sample_id", pa.int64()),
                                             ("text", pa.string()), ("pair", pa.string()),
                                             ("group", pa.string())])))
    views: dict[str, list[TeacherManifest]] = {}
    for named in name_caches(cache, teachers, used):
        views.setdefault(named.view, []).append(named.m)
    for view, manifests in views.items():
        tables = [_teacher_table(cache, m, plans[m.plan_id], entry)
                  for m in manifests for _, entry in sorted(cache.published_shards(m.teacher_id).items())
                  if not cache.shard_problem(m.teacher_id, entry, checksum=False)]
        con.register(view, _concat(tables, None))
    return con


def describe(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.sql("SELECT table_name, string_agg(column_name, ', ' ORDER BY ordinal_position) "
                   "FROM information_schema.columns GROUP BY table_name ORDER BY table_name").fetchall()
    return "\n".join(f"  {name}({columns})" for name, columns in rows)


def _concat(tables: list[pa.Table], schema: pa.Schema | None) -> pa.Table:
    if tables:
        return pa.concat_tables(tables, promote_options="permissive")
    return schema.empty_table() if schema else pa.table({"plan_id": pa.array([], pa.string())})


def _text_table(cache: Cache, plan, index: int) -> pa.Table:
    text = cache.read_text_shard(plan, index)
    table = _keys(plan.plan_id, index, text.column("row"), text.column("sample_id"))
    for name in ("text", "pair", "group"):
        table = table.append_column(name, text.column(name) if name in text.column_names
                                    else pa.nulls(len(text), pa.string()))
    return table


def _keys(plan_id: str, index: int, rows, ids) -> pa.Table:
    n = len(rows)
    return pa.table({"plan_id": pa.array([plan_id] * n, pa.string()),
                     "shard": pa.array(np.full(n, index, np.int32)), "row": rows, "sample_id": ids})


def _teacher_table(cache: Cache, m: TeacherManifest, plan, entry: ShardEntry) -> pa.Table:
    index = entry.index
    shard = cache.read_shard(m.teacher_id, entry)
    table = _keys(m.plan_id, index, cache.read_text_shard(plan, index).column("row"),
                  shard.column("sample_id"))
    for name in shard.column_names:
        if name not in ("sample_id", *LEFT_OUT):
            column = shard.column(name)
            table = table.append_column(name, column.cast(_without_float16(column.type)))
    if "logits" in shard.column_names:
        table = _add_predictions(table, to_matrix(shard.column("logits")), m)
    return table


def _add_predictions(table: pa.Table, logits: np.ndarray, m: TeacherManifest) -> pa.Table:
    ok = np.isfinite(logits).all(axis=1)
    p = probabilities(logits[ok])
    entropy, margin = confidence(p)
    pred = p.argmax(axis=1)
    columns = {"pred": pred.astype(np.int32), "label": np.array(class_names(m), dtype=object)[pred],
               "confidence": p.max(axis=1).astype(np.float32),
               "margin": margin.astype(np.float32), "entropy": entropy.astype(np.float32)}
    for name, values in columns.items():
        full = np.empty(len(logits), dtype=values.dtype)
        full[ok] = values
        table = table.append_column(name, pa.array(full, mask=~ok))
    return table


def _without_float16(t: pa.DataType) -> pa.DataType:
    """The same type with float16 anywhere inside it replaced by float32."""
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_without_float16(t.value_type), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(_without_float16(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_without_float16(t.value_type))
    return t
