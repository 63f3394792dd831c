"""Where the cache lives: a local path or any fsspec URL, and atomic publishing there.

A file in the cache exists only once it is complete. Locally we write a temporary file in the
destination folder and `os.replace` it (atomic on POSIX); on object stores a single PUT becomes
visible whole, so we write locally and upload (s3fs sends files of 100 MiB and more as a
multipart upload, which is invisible until completed: a killed writer leaves parts that no
listing shows, tests/test_s3.py). Either way a reader never sees half a file, and two racing
writers of the same name leave one complete file, never a mix.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from distill.storage.records import CacheError

TMP_SUFFIX = ".tmp"
# What an object store answers when it is restarting, overloaded or throttling: s3fs raises
# OSError(EREMOTEIO) for 500 InternalError and OSError(EBUSY) for 503 SlowDown/ServiceUnavailable.
TRANSIENT_ERRNOS = {getattr(errno, "EREMOTEIO", errno.EIO), errno.EBUSY, errno.EAGAIN}
TRANSIENT_STATUS = {429, 500, 502, 503, 504}


class StoreUnavailable(OSError):
    """The store still failed with a transient error after the shard's retries."""

    @classmethod
    def of(cls, location: str, what: str, error: BaseException) -> "StoreUnavailable":
        """The one line a command ends with: the store, what failed, what to check."""
        return cls(f"{location}: {what} ({str(error).splitlines()[0]}); check that the store is "
                   "up and reachable (for S3: AWS_ENDPOINT_URL), then re-run: shards already "
                   "published are kept")


def _http_errors() -> tuple[type, ...]:
    """botocore's own connection errors (refused, reset, timed out), which are no OSError."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no S3 support installed, so no such error either
        return ()
    return BotoConnectionError, HTTPClientError


def is_transient(error: BaseException) -> bool:
    """Whether an error of the store may pass by itself (HTTP 5xx, throttling, a reset
    connection, a timeout), so that retrying the same write is worth it. Follows the causes:
    s3fs wraps botocore's answer, which carries the HTTP status."""
    while error is not None:
        if isinstance(error, (StoreUnavailable, ConnectionError, TimeoutError, *_http_errors())):
            return True
        if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
            return True
        response = getattr(error, "response", None)
        if isinstance(response, dict) and \
                response.get("ResponseMetadata", {}).get("HTTPStatusCode") in TRANSIENT_STATUS:
            return True
        error = error.__cause__
    return False


def resolve(location: str | os.PathLike) -> tuple[AbstractFileSystem, str]:
    """Split a cache location into its filesystem and root path (no trailing slash).

    Directory listings are never cached: other processes write the same cache (a resumed run,
    Ray/Dask workers, a test or a trainer watching it), and s3fs would otherwise answer `ls`,
    `glob` and `exists` from a listing taken before their writes. Credentials and endpoint
    come from the filesystem's own configuration (for S3 the standard `AWS_*` variables), so
    every thread and worker process of a run sees the same ones.
    """
    try:
        fs, root = url_to_fs(str(location), use_listings_cache=False)
    except ImportError as e:  # e.g. s3:// without s3fs
        raise CacheError(f"{location}: {e} (for s3:// caches: pip install 'distill[s3]')") from e
    return fs, root.rstrip("/") or "/"


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def is_local(fs: AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


@contextmanager
def staged_file(fs: AbstractFileSystem, dest: str) -> Iterator[Path]:
    """Yield a local path to write; on clean exit it is published at `dest` atomically.

    On error (or a kill) only a `*.tmp` file is left behind, which no reader ever opens.
    """
    if is_local(fs):
        fs.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = Path(f"{dest}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        with tempfile.TemporaryDirectory(prefix="distill-") as d:
            tmp = Path(d) / os.path.basename(dest)
            yield tmp
            fs.put_file(str(tmp), dest)


def publish_bytes(fs: AbstractFileSystem, dest: str, data: bytes) -> None:
    with staged_file(fs, dest) as tmp:
        tmp.write_bytes(data)


def sha256_file(fs: AbstractFileSystem, path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_local(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(fs: AbstractFileSystem, folder: str) -> int:
    """Delete `*.tmp` leftovers of killed writers in `folder`; returns how many."""
    if not fs.exists(folder):
        return 0
    stale = [p for p in fs.ls(folder, detail=False) if p.endswith(TMP_SUFFIX)]
    for p in stale:
        fs.rm_file(p)
    return len(stale)
