"""Build and store a corpus plan: sample ids, fixed shard boundaries, text shards.

The plan keeps the text of every sample in its own Arrow shards (`text-NNNNN.arrow`: sample_id,
row, text; for a pair corpus also `pair` and `group`), so teacher runs and training never need
the original corpus files. Rows that cannot be a sample (empty, or not a string; for pairs,
either text) are skipped here, once, and counted in plan.json, so every teacher sees exactly
the same rows.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import pyarrow as pa

from distill.storage import FORMAT_VERSION
from distill.storage.fs import join, publish_bytes
from distill.storage.ids import sample_id
from distill.storage.records import CacheError, Plan, ShardEntry, SkippedRows
from distill.storage.shards import write_table

TEXT_SCHEMA = pa.schema([("sample_id", pa.int64()), ("row", pa.int64()), ("text", pa.string())])
PAIR_SCHEMA = TEXT_SCHEMA.append(pa.field("pair", pa.string())).append(pa.field("group", pa.string()))
_MAX_EXAMPLES = 20


class Pair(NamedTuple):
    """One row of a pair corpus: (query, passage) and the query group it is ranked in."""

    text: object
    pair: object
    group: str


def text_file(index: int) -> str:
    return f"text-{index:05d}.arrow"


def build_plan(cache, rows: Iterable[tuple[int, object]], *, source: str, text_column: str,
               rows_per_shard: int, progress=None, pair_column: str | None = None,
               group_column: str | None = None) -> Plan:
    """Stream (row number, value) pairs into a plan stored under `corpora/<plan-id>/`; a value
    is a text, or a `Pair` for a pair corpus (`pair_column` and `group_column` given).

    One pass: text shards are staged locally while the fingerprint is computed (the plan id is
    only known at the end), then published; an already-stored identical plan is reused as is.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    skipped = SkippedRows()
    fingerprint = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="distill-plan-") as staging:
        local = _LocalShards(Path(staging), rows_per_shard, pairs=pair_column is not None)
        for row, value in _usable(rows, skipped):
            fingerprint.update(_fingerprint_part(value))
            local.add(row, value)
            if progress:
                progress(1)
        local.flush()
        if not local.rows:
            raise ValueError(f"{source}: no usable text in column '{text_column}' "
                             f"({skipped.empty} empty, {skipped.non_string} non-string rows)")
        fingerprint = fingerprint.hexdigest()
        plan_id = _plan_id(fingerprint, rows_per_shard)
        try:
            existing = cache.find_plan(plan_id)
        except CacheError:  # a damaged plan.json: written anew below, from the rows just read
            existing = None
        if existing is not None:
            _repair_text_shards(cache, existing, local.files)
            return existing
        folder = cache.plan_dir(plan_id)
        shards = []
        for index, (path, first_row) in enumerate(local.files):
            written = _publish_text_shard(cache, folder, index, path)
            shards.append(ShardEntry(index=index, file=text_file(index), rows=written.rows,
                                     bytes=written.bytes, sha256=written.sha256,
                                     first_row=first_row))
    plan = Plan(plan_id=plan_id, format_version=FORMAT_VERSION, source=source,
                text_column=text_column, fingerprint=fingerprint,
                rows_per_shard=rows_per_shard, rows=local.rows, skipped=skipped, shards=shards,
                **local.group_summary(pair_column, group_column))
    publish_bytes(cache.fs, join(folder, "plan.json"), plan.to_json())  # last: marks it done
    return plan


def _publish_text_shard(cache, folder: str, index: int, staged: Path):
    table = pa.ipc.open_stream(pa.memory_map(str(staged))).read_all()
    return write_table(cache.fs, join(folder, text_file(index)), table)


def _repair_text_shards(cache, plan: Plan, staged: list[tuple[Path, int]]) -> None:
    """Rewrite the text shards of a stored plan that are missing or damaged, from the rows just
    read (the same content: the plan id is its fingerprint, and the writer is deterministic)."""
    folder = cache.plan_dir(plan.plan_id)
    for entry, (path, _) in zip(plan.shards, staged):
        if cache.file_problem(folder, entry) is None:
            continue
        written = _publish_text_shard(cache, folder, entry.index, path)
        if written.sha256 != entry.sha256:
            raise CacheError(f"{join(folder, entry.file)}: rewritten from the corpus, it does not "
                             f"match the sha256 in plan.json; delete {folder} and re-run "
                             "`distill cache CONFIG`")


def plan_id_of(rows: Iterable[tuple[int, object]], rows_per_shard: int) -> str:
    """The id `build_plan` gives these rows, computed without writing anything: which plan in a
    cache a corpus has (for `distill gc`, which must not build plans to find the ones in use)."""
    fingerprint = hashlib.sha256()
    for _, value in _usable(rows, SkippedRows()):
        fingerprint.update(_fingerprint_part(value))
    return _plan_id(fingerprint.hexdigest(), rows_per_shard)


def _plan_id(fingerprint: str, rows_per_shard: int) -> str:
    plan_key = f"v{FORMAT_VERSION}|{fingerprint}|{rows_per_shard}"
    return hashlib.sha256(plan_key.encode()).hexdigest()[:16]


def _fingerprint_part(value: str | Pair) -> bytes:
    """A text, or a pair's three fields behind a marker byte that no text part starts with, so
    a pair corpus never shares a fingerprint with a single-text one."""
    if isinstance(value, Pair):
        return b"\1" + b"".join(str(v).encode("utf-8") + b"\0" for v in value)
    return value.encode("utf-8") + b"\0"


def _usable(rows: Iterable[tuple[int, object]], skipped: SkippedRows) -> Iterator[tuple[int, str]]:
    """The rows that are samples, in order; the others are counted in `skipped` (with the first
    few row numbers as examples)."""
    for row, value in rows:
        reason = skip_reason(value)
        if reason is None:
            yield row, value
            continue
        setattr(skipped, reason, getattr(skipped, reason) + 1)
        examples = skipped.examples.setdefault(reason, [])
        if len(examples) < _MAX_EXAMPLES:
            examples.append(row)


def skip_reason(value: object) -> str | None:
    """Why a corpus value is not a sample ("non_string", "empty"), or None for a sample; the
    one definition that plans and the commands' pre-flight check share. A pair is a sample when
    both of its texts are."""
    if isinstance(value, Pair):
        return skip_reason(value.text) or skip_reason(value.pair)
    if not isinstance(value, str):
        return "non_string"
    if not value.strip():
        return "empty"
    return None


class _LocalShards:
    """Accumulates text rows and writes a staged shard every `rows_per_shard` rows."""

    def __init__(self, folder: Path, rows_per_shard: int, pairs: bool = False):
        self.folder, self.rows_per_shard = folder, rows_per_shard
        self.schema = PAIR_SCHEMA if pairs else TEXT_SCHEMA
        self.files: list[tuple[Path, int]] = []
        self.rows = 0
        self.group_sizes: Counter = Counter()
        self._columns: list[list] = [[] for _ in self.schema]

    def add(self, row: int, value: str | Pair) -> None:
        if isinstance(value, Pair):
            values = [sample_id(value.text, value.pair), row, value.text, value.pair, value.group]
            self.group_sizes[value.group] += 1
        else:
            values = [sample_id(value), row, value]
        for column, v in zip(self._columns, values):
            column.append(v)
        self.rows += 1
        if len(self._columns[0]) == self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self._columns[0]:
            return
        table = pa.table(self._columns, schema=self.schema)
        path = self.folder / text_file(len(self.files))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, self.schema) as w:
            w.write_table(table)
        self.files.append((path, self._columns[1][0]))
        self._columns = [[] for _ in self.schema]

    def group_summary(self, pair_column: str | None, group_column: str | None) -> dict:
        """The plan fields of a pair corpus: its columns, and how many query groups it has and
        how many of them hold one candidate only (nothing to rank: ranking losses and metrics
        skip them, counted)."""
        if pair_column is None:
            return {}
        if group_column is None:
            return {"pair_column": pair_column}
        return {"pair_column": pair_column, "group_column": group_column,
                "groups": len(self.group_sizes),
                "single_candidate_groups": sum(n == 1 for n in self.group_sizes.values())}
