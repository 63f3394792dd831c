"""Per-token statistics of causal-LM caches (sparse top-k targets), kept in one place.

The column names below are this module's reading of DESIGN.md's cache contract for sparse LM
targets ("per token: top-k ids + log-probs + the log of the mass outside the top-k"); the
causal-LM cache itself is built in issue 6. If that cache names them differently, only the
three constants change. One row is one sequence; each column is a list over its positions:

- `topk_ids`       list<fixed_size_list<int32>[k]>          the k most likely next tokens
- `topk_logprobs`  list<fixed_size_list<float16|float32>[k]> their log-probabilities
- `tail_logmass`   list<float32>                             log(1 - sum of the top-k probabilities)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from storage.columns import to_matrix
from storage.summaries import Histogram

TOPK_IDS = "topk_ids"
TOPK_LOGPROBS = "topk_logprobs"
TAIL_LOGMASS = "tail_logmass"


def is_lm_cache(columns) -> bool:
    """True for a causal-LM teacher cache (its manifest's or shard's column names)."""
    return TOPK_LOGPROBS in columns and TAIL_LOGMASS in columns


def token_entropy(logprobs: np.ndarray, tail_logmass: np.ndarray) -> np.ndarray:
    """Entropy in nats per token of the top-k distribution with the tail as one outcome.

    This is a lower bound on the teacher's full entropy (the tail's spread over the rest of
    the vocabulary is unknown) and at most log(k + 1).
    """
    logprobs = logprobs.astype(np.float64)
    tail = tail_logmass.astype(np.float64)
    tail_term = np.exp(tail) * np.where(np.isfinite(tail), tail, 0.0)  # 0 log 0 = 0
    return -(np.exp(logprobs) * logprobs).sum(axis=1) - tail_term


class TokenStats:
    """Tail mass and entropy over every cached token of one teacher, shard by shard."""

    def __init__(self, bins: int = 20):
        self.bins = bins
        self.tail_mass = Histogram(0.0, 1.0, bins)
        self.entropy: Histogram | None = None  # its range, [0, log(k+1)], needs k
        self.tokens = 0
        self.sequences = 0

    def add(self, table: pa.Table) -> None:
        logprobs = to_matrix(table.column(TOPK_LOGPROBS).combine_chunks().flatten())
        tail = table.column(TAIL_LOGMASS).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if self.entropy is None:
            self.entropy = Histogram(0.0, float(np.log(logprobs.shape[1] + 1)), self.bins)
        self.tail_mass.add(np.exp(tail.astype(np.float64)))
        self.entropy.add(token_entropy(logprobs, tail))
        self.tokens += len(tail)
        self.sequences += table.num_rows - table.column(TAIL_LOGMASS).null_count

    def to_json(self) -> dict:
        entropy = self.entropy or Histogram(0.0, 1.0, self.bins)
        return {"tokens": self.tokens, "sequences": self.sequences,
                "tokens_per_sequence": self.tokens / self.sequences if self.sequences else None,
                "mean_tail_mass": self.tail_mass.mean, "mean_entropy_nats": entropy.mean,
                "histograms": {"tail_mass": self.tail_mass.to_json(),
                               "entropy_nats": entropy.to_json()}}
