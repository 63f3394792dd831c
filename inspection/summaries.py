"""Streaming summaries for inspection: fixed-bin histograms and reliability (calibration) bins.

Both add up shard by shard, so inspecting a cache of any size keeps memory flat, and both
turn into plain JSON that `--json`, the plots and the HTML report share.
"""

from __future__ import annotations

import numpy as np

# The one bin count of every ECE this project reports (`distill inspect --labels`, `distill
# calibrate`): 15 equal-width bins, as in Guo et al. 2017. ECE moves with the binning, so two
# commands with two bin counts would disagree on the same teacher.
ECE_BINS = 15


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


class Histogram:
    """Counts of values over fixed equal-width bins on [lo, hi] (values outside are clipped
    into the end bins), plus their exact mean; non-finite values are left out."""

    def __init__(self, lo: float = 0.0, hi: float = 1.0, bins: int = 20):
        self.edges = np.linspace(lo, hi, bins + 1)
        self.counts = np.zeros(bins, dtype=np.int64)
        self.total = 0.0
        self.n = 0

    def add(self, values) -> None:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        clipped = np.clip(values, self.edges[0], self.edges[-1])
        self.counts += np.histogram(clipped, self.edges)[0]
        self.total += float(values.sum())
        self.n += len(values)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def to_json(self) -> dict:
        return {"edges": _rounded(self.edges), "counts": self.counts.tolist(), "mean": self.mean}


class Reliability:
    """Top-1 confidence against accuracy in equal-width confidence bins: the reliability
    diagram and the expected calibration error (ECE = sum over bins of
    rows_b / rows * |accuracy_b - confidence_b|)."""

    def __init__(self, bins: int = ECE_BINS):
        self.edges = np.linspace(0.0, 1.0, bins + 1)
        self.rows = np.zeros(bins, dtype=np.int64)
        self.confidence = np.zeros(bins)
        self.correct = np.zeros(bins)

    def add(self, confidence: np.ndarray, correct: np.ndarray) -> None:
        bins = len(self.rows)
        index = np.clip(np.digitize(confidence, self.edges[1:-1], right=True), 0, bins - 1)
        self.rows += np.bincount(index, minlength=bins)
        self.confidence += np.bincount(index, weights=confidence, minlength=bins)
        self.correct += np.bincount(index, weights=correct.astype(np.float64), minlength=bins)

    def _means(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-bin accuracy and mean confidence (0 in empty bins)."""
        filled = self.rows > 0
        accuracy = np.divide(self.correct, self.rows, out=np.zeros_like(self.correct), where=filled)
        mean_conf = np.divide(self.confidence, self.rows, out=np.zeros_like(self.confidence),
                              where=filled)
        return accuracy, mean_conf

    def ece(self) -> float | None:
        """The expected calibration error of the rows added so far; None before any."""
        total = int(self.rows.sum())
        accuracy, mean_conf = self._means()
        return float((self.rows * np.abs(accuracy - mean_conf)).sum() / total) if total else None

    def to_json(self) -> dict:
        total = int(self.rows.sum())
        accuracy, mean_conf = self._means()
        bins = [{"lo": lo, "hi": hi, "rows": int(n), "confidence": float(c) if n else None,
                 "accuracy": float(a) if n else None}
                for lo, hi, n, c, a in zip(_rounded(self.edges[:-1]), _rounded(self.edges[1:]),
                                           self.rows, mean_conf, accuracy)]
        return {"rows": total, "accuracy": float(self.correct.sum() / total) if total else None,
                "ece": self.ece(), "bins": bins}


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray) -> float | None:
    """ECE of the top-class confidence of `probs` [N, C] against gold class indices [N], in the
    same bins as `Reliability` (which streams it shard by shard); None for no rows."""
    reliability = Reliability()
    reliability.add(probs.max(axis=1), probs.argmax(axis=1) == gold)
    return reliability.ece()
