"""Numpy <-> Arrow for the cache's payload columns, without copies where Arrow allows.

Dense per-row vectors are `fixed_size_list<dtype>[width]` (reshape straight to [rows, width];
`datasets` infers `List(Value(dtype), length=width)`); token-level vectors are
`list<fixed_size_list<dtype>[width]>`, and token-level values of varying count (a causal LM's
sampled ids) are `list<list<dtype>>`: one row per text either way, so shards stay aligned
with their plan.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def fixed_rows(matrix: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """[rows, width] -> fixed_size_list; rows where `valid` is False become null."""
    rows, width = matrix.shape
    values = pa.array(np.ascontiguousarray(matrix).reshape(-1))
    mask = None if valid is None or valid.all() else pa.array(~valid)
    return pa.FixedSizeListArray.from_arrays(values, width, mask=mask)


def ragged_rows(blocks: list[np.ndarray]) -> pa.ListArray:
    """A list of [length_i, width] arrays -> list<fixed_size_list<dtype>[width]>."""
    width = blocks[0].shape[1]
    offsets = np.zeros(len(blocks) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in blocks], out=offsets[1:])
    inner = fixed_rows(np.concatenate(blocks, axis=0).reshape(-1, width))
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def nested(values: pa.Array | np.ndarray, lengths: np.ndarray,
           valid: np.ndarray | None = None) -> pa.ListArray:
    """Flat values and per-row counts -> list<...>; rows where `valid` is False become null
    (give them length 0: a null row holds no values)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    mask = None if valid is None or valid.all() else pa.array(~valid)
    values = values if isinstance(values, pa.Array) else pa.array(values)
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask)


def unnest(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """list<...> -> (the values of every row, one level down, in order; per-row counts, 0 for
    null rows). Works on sliced and gathered arrays, whose offsets need not start at 0."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    return pc.list_flatten(column), lengths.astype(np.int64)


def to_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """fixed_size_list column -> [rows, width] numpy (zero copy for one chunk without nulls)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    width = column.type.list_size
    values = column.flatten() if column.null_count == 0 else _fill_nulls(column)
    return values.to_numpy(zero_copy_only=False).reshape(-1, width)


def _fill_nulls(column: pa.FixedSizeListArray) -> pa.Array:
    """Null rows (skipped samples) become rows of NaN so shapes stay aligned."""
    width = column.type.list_size
    matrix = np.full((len(column), width), np.nan, dtype=column.type.value_type.to_pandas_dtype())
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    matrix[valid] = column.drop_null().flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return pa.array(matrix.reshape(-1))
