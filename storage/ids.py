"""Stable 64-bit sample ids from normalised text (docs/cache-format.md).

The id depends on the text only, not on its row, so the same text has the same id in every
corpus that contains it. Normalisation (Unicode NFC, whitespace collapsed, ends stripped) makes
ids robust to invisible formatting differences; case and punctuation are kept because models
see them.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable

import numpy as np

_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def sample_id(text: str) -> int:
    """Signed int64 (Arrow, DuckDB and Polars all read int64; uint64 trips some of them)."""
    digest = hashlib.blake2b(normalize_text(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def sample_ids(texts: Iterable[str]) -> np.ndarray:
    return np.fromiter((sample_id(t) for t in texts), dtype=np.int64)
