"""What every teacher kind's PyTorch inference shares: the device, autocast to the teacher's
dtype, and tokenizing a shard's texts longest first. The kinds' inference classes are in
pipeline/kinds/*/inference.py."""

from __future__ import annotations

import numpy as np
import torch

from distill.pipeline.inputs import encode

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, dtype: str):
    """Autocast to the teacher's `dtype` (a no-op for float32)."""
    dtype = DTYPES[dtype]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def encode_longest_first(tokenizer, texts: list[str], max_length: int,
                         pairs: list[str] | None = None, truncation: str = "only_second"):
    """(features, truncated flags, token counts, row order longest first): batches cut from
    that order hold texts of similar length, so little padding is computed (and the first batch
    shows at once whether the longest texts fit in memory). `pairs`: (text, pair) inputs,
    tokenized by the helper every backend and the student share (pipeline/inputs.py)."""
    encoded = encode(tokenizer, texts, pairs, max_length, truncation)
    lengths = encoded.lengths
    return encoded.features, encoded.truncated, lengths, np.argsort(-lengths, kind="stable")
