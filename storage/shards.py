"""Arrow IPC shard files: write once (atomically), read memory-mapped.

We write the IPC *stream* format with an `.arrow` suffix: it is what
`datasets.Dataset.from_file` memory-maps (zero copy), and plain pyarrow
(`pa.ipc.open_stream`), Polars (`pl.read_ipc_stream`) and DuckDB (over the pyarrow table) read
it too. `pyarrow.dataset` reads only the IPC *file* format, so we prune by manifest instead
(docs/cache-format.md). Uncompressed: dense logits and features barely
compress, and uncompressed IPC is read zero-copy. Sparse token-level payloads (a causal LM's
top-k ids and log-probs) do compress (roughly by half), so a writer
may ask for zstd; every reader above decompresses transparently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
from fsspec import AbstractFileSystem

from distill.storage.fs import is_local, sha256_local, staged_file
from distill.storage.records import DamagedShard

# One record batch per this many rows: big enough that per-batch metadata is noise in the
# file size, small enough that readers can stream a shard.
BATCH_ROWS = 65536


@dataclass(frozen=True)
class WrittenFile:
    rows: int
    bytes: int
    sha256: str


def write_table(fs: AbstractFileSystem, dest: str, table: pa.Table,
                compression: str | None = None) -> WrittenFile:
    """Write `table` as an IPC stream at `dest`, atomically (buffers compressed with
    `compression`: None, "lz4" or "zstd"); return its size and checksum."""
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with staged_file(fs, dest) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema, options=options) as writer:
            writer.write_table(table, max_chunksize=BATCH_ROWS)
        written = WrittenFile(table.num_rows, tmp.stat().st_size, sha256_local(tmp))
    return written


def read_table(fs: AbstractFileSystem, path: str, sha256: str | None = None) -> pa.Table:
    """Read a shard: memory-mapped locally (zero copy); from an object store with one GET of
    the whole object, so readers stream a remote cache shard by shard and never download more
    than the shards they are using.

    With `sha256` (the digest its entry recorded) the bytes are hashed on the way in, in the
    same pass that brings them into memory, and a shard that does not match, or is not an
    Arrow stream at all, is refused before anyone sees a row of it (`DamagedShard`)."""
    data = pa.memory_map(path, "r").read_buffer() if is_local(fs) else pa.py_buffer(fs.cat_file(path))
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise DamagedShard(path, "does not match its recorded sha256")
    try:
        with pa.ipc.open_stream(data) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DamagedShard(path, f"is not a readable Arrow stream ({e})") from e
