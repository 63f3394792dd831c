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


# Joins a pair's two texts in its id. Normalisation turns it into a space inside a text (it is
# whitespace to Python), so ("a b", "c") and ("a", "b c") can never hash alike.
PAIR_SEPARATOR = "\x1f"


def sample_id(text: str, pair: str | None = None) -> int:
    """Signed int64 (Arrow, DuckDB and Polars all read int64; uint64 trips some of them). A
    pair (query, passage) is one sample: its id covers both texts, in order; a single text
    keeps the id it always had."""
    key = normalize_text(text) if pair is None else \
        normalize_text(text) + PAIR_SEPARATOR + normalize_text(pair)
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def sample_ids(texts: Iterable[str], pairs: Iterable[str] | None = None) -> np.ndarray:
    texts = list(texts)
    pairs = [None] * len(texts) if pairs is None else list(pairs)
    return np.fromiter((sample_id(t, p) for t, p in zip(texts, pairs)), dtype=np.int64,
                       count=len(texts))
