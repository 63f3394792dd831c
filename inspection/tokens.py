"""Per-token statistics of a causal-LM teacher cache for `distill inspect`: tail mass and
entropy, added up shard by shard into fixed-bin histograms (memory stays flat)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from distill.inspection.summaries import Histogram
from distill.storage.columns import to_matrix
from distill.storage.lm_tokens import DRAW_COUNTS, TAIL_LOGMASS, TOPK_CODES, decode_logprobs
from distill.storage.records import TeacherManifest


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
        if DRAW_COUNTS in table.column_names:
            self._add_draws(table)
            return
        logprobs = decode_logprobs(to_matrix(table.column(TOPK_CODES).combine_chunks().flatten()))
        tail = table.column(TAIL_LOGMASS).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if self.entropy is None:
            self.entropy = Histogram(0.0, float(np.log(logprobs.shape[1] + 1)), self.bins)
        self.tail_mass.add(np.exp(tail.astype(np.float64)))
        self.entropy.add(token_entropy(logprobs, tail))
        self.tokens += len(tail)
        self.sequences += table.num_rows - table.column(TAIL_LOGMASS).null_count

    def _add_draws(self, table: pa.Table) -> None:
        """Sampled caches: the plug-in entropy of each token's draws (no tail: the draws are
        the estimate of the whole distribution)."""
        column = table.column(DRAW_COUNTS).combine_chunks()
        per_token = column.flatten()                      # list<uint8> per token
        counts = per_token.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        owner = np.repeat(np.arange(len(per_token)), np.diff(per_token.offsets.to_numpy()))
        totals = np.bincount(owner, weights=counts, minlength=len(per_token))
        p = counts / totals[owner]
        entropy = -np.bincount(owner, weights=p * np.log(p), minlength=len(per_token))
        if self.entropy is None:
            self.entropy = Histogram(0.0, float(np.log(max(totals.max(initial=1), 2))), self.bins)
        self.entropy.add(entropy)
        self.tokens += len(per_token)
        self.sequences += table.num_rows - column.null_count

    def to_json(self) -> dict:
        entropy = self.entropy or Histogram(0.0, 1.0, self.bins)
        return {"tokens": self.tokens, "sequences": self.sequences,
                "tokens_per_sequence": self.tokens / self.sequences if self.sequences else None,
                "mean_tail_mass": self.tail_mass.mean, "mean_entropy_nats": entropy.mean,
                "histograms": {"tail_mass": self.tail_mass.to_json(),
                               "entropy_nats": entropy.to_json()}}


class TokenPayload:
    """The report's summary of a causal-LM cache: its per-token statistics and what its padded
    output head did."""

    compared = False   # no classes to compare with other teachers

    def __init__(self, m: TeacherManifest, entries: dict, labels=None, groups=None):
        self.m, self.entries = m, entries
        self.tokens = TokenStats()

    def add(self, table: pa.Table) -> None:
        self.tokens.add(table)

    def to_json(self) -> dict:
        tokens = self.tokens.to_json()
        return {"tokens": tokens, "padded_head": self._padded_head(tokens["tokens"])}

    def _padded_head(self, tokens: int) -> dict:
        """Rows of the teacher's output head beyond its tokenizer (never stored) and the mass it
        put on them: a model trained with those rows masked puts ~0 there, one that did not
        loses that much probability to ids no text can contain."""
        settings, entries = self.m.settings, self.entries.values()
        rows = settings.get("head_rows", settings.get("vocab_size", 0)) - settings.get("vocab_size", 0)
        return {"padded_rows": rows,
                "mean_mass": sum(e.padded_mass for e in entries) / tokens if tokens else 0.0,
                "max_mass": max((e.padded_mass_max for e in entries), default=0.0)}
