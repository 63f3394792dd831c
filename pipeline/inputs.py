"""Tokenize a model's inputs: single texts, or (text, pair) as one pair input.

The one place where teachers (every inference backend) and students turn plan rows
into token ids, so a teacher and the student trained on its cache see a pair the same way:
`tokenizer(text, text_pair)`, with the pair's own special tokens and token type ids, cut to
`max_length` by the configured truncation (`only_second` by default: the passage is cut, the
query kept). A pair whose first text alone does not fit leaves `only_second` nothing to cut;
the tokenizer would raise, so such a row is cut `longest_first` instead and flagged truncated
like any other cut row (the symmetric case for `only_first`). No torch here: ONNX Runtime inference
uses the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The text that `only_<which>` keeps whole, by truncation strategy.
_KEPT = {"only_second": 0, "only_first": 1}


@dataclass
class Encoded:
    """Unpadded token features per row (`input_ids`, `attention_mask`, `token_type_ids`, ...)
    and which rows were cut."""

    features: dict[str, list[list[int]]]
    truncated: np.ndarray                    # [rows] bool

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(ids) for ids in self.features["input_ids"]])

    def rows(self, picks) -> dict[str, list[list[int]]]:
        """The features of rows `picks`, ready for `tokenizer.pad`."""
        return {k: [v[i] for i in picks] for k, v in self.features.items()}


def encode(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
           truncation: str = "only_second") -> Encoded:
    """Token features of every row, unpadded; `pairs` None for single texts."""
    if pairs is None:
        return _encoded(tokenizer(texts, truncation=True, max_length=max_length), len(texts))
    fallback = _cannot_keep(tokenizer, texts, pairs, max_length, truncation)
    features: dict[str, list] = {}
    truncated = np.zeros(len(texts), dtype=bool)
    for strategy, rows in ((truncation, np.flatnonzero(~fallback)),
                           ("longest_first", np.flatnonzero(fallback))):
        if not len(rows):
            continue
        part = _encoded(tokenizer([texts[i] for i in rows], [pairs[i] for i in rows],
                                  truncation=strategy, max_length=max_length), len(rows))
        for key, values in part.features.items():
            column = features.setdefault(key, [None] * len(texts))
            for i, value in zip(rows, values):
                column[i] = value
        truncated[rows] = part.truncated
    return Encoded(features, truncated)


def encode_padded(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                  truncation: str = "only_second", return_tensors: str = "pt"):
    """One padded batch (the student's training and evaluation inputs); single texts take the
    tokenizer's own padded call, as they always did."""
    if pairs is None:
        return tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                         return_tensors=return_tensors)
    encoded = encode(tokenizer, texts, pairs, max_length, truncation)
    return tokenizer.pad(encoded.features, return_tensors=return_tensors)


def _encoded(batch, rows: int) -> Encoded:
    return Encoded({k: list(v) for k, v in batch.items()},
                   np.array([bool(e.overflowing) for e in batch.encodings], dtype=bool).reshape(rows))


def _cannot_keep(tokenizer, texts: list[str], pairs: list[str], max_length: int,
                 truncation: str) -> np.ndarray:
    """[rows] bool: rows whose text that `truncation` keeps whole leaves no room for a token of
    the other (plus the pair's special tokens)."""
    if truncation not in _KEPT:
        return np.zeros(len(texts), dtype=bool)
    kept = texts if _KEPT[truncation] == 0 else pairs
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    lengths = np.array([len(ids) for ids in
                        tokenizer(kept, add_special_tokens=False)["input_ids"]], dtype=np.int64)
    return lengths >= room
