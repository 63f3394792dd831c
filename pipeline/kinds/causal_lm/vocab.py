"""Which vocabulary a causal LM speaks: a fingerprint to compare teachers and students by, and the
narrowest integer type its token ids fit in.

Token-level distillation matches distributions id by id, so it is only meaningful between models
that share one tokenizer. Files are a poor test (the same vocabulary ships with different
tokenizer configs, chat templates or file formats), so we hash the token -> id map itself.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from distill.pipeline.config import ConfigError


def vocab_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's token -> id map (added tokens included)."""
    pairs = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


def tokenizer_size(tokenizer) -> int:
    """How many token ids the tokenizer can produce (its largest id + 1, added tokens included):
    the vocabulary that caches store and students train on, whatever the output head's size."""
    return max(tokenizer.get_vocab().values()) + 1


def padded_rows(head_rows: int, vocab_size: int, who: str) -> int:
    """Rows of an output head beyond the tokenizer's ids (heads are often padded to a multiple
    of 64 or 128: Qwen2 has 152,064 rows for 151,936 ids). Those rows never stand for a token, so
    caches leave them out and students are not trained on them; a head with fewer rows than
    the tokenizer has ids cannot score every token and is refused."""
    if head_rows < vocab_size:
        raise ConfigError(f"{who}: its output head has {head_rows} rows but its tokenizer has "
                          f"{vocab_size} token ids, so some tokens have no logit; give it the "
                          "tokenizer it was trained with")
    return head_rows - vocab_size


def id_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocabularies up to 65,536 tokens), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2 ** 16 else np.dtype(np.uint32)


def check_same_vocabulary(models: dict[str, dict], where: str) -> None:
    """`models` maps a name to {"vocab_size", "vocab_sha256"}; refuse any disagreement with a
    message that names both sides (there is no cross-tokenizer distillation here)."""
    (first, ref), *others = models.items()
    for name, info in others:
        if (info["vocab_size"], info["vocab_sha256"]) != (ref["vocab_size"], ref["vocab_sha256"]):
            raise ConfigError(
                f"{where}: '{name}' and '{first}' use different tokenizers (vocabulary of "
                f"{info['vocab_size']} vs {ref['vocab_size']} ids, fingerprints "
                f"{info['vocab_sha256'][:12]} vs {ref['vocab_sha256'][:12]}). Token-level "
                "distillation compares next-token distributions id by id, so every causal-LM "
                "teacher and the student must share one tokenizer; cross-tokenizer distillation "
                "is not supported. Remove that teacher or pick a student with the teachers' "
                "tokenizer.")
