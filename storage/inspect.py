"""What is in a cache: coverage, confidence and agreement, computed with numpy only.

Statistics stream shard by shard, so inspecting a large cache keeps memory flat.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from storage.cache import Cache
from storage.columns import to_matrix
from storage.records import TeacherManifest


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over classes; a single score is a binary relevance logit (sigmoid)."""
    logits = logits.astype(np.float64)
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits))
        return np.concatenate([1 - p, p], axis=1)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def confidence(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised entropy H(p)/log C and margin (top-1 minus top-2 probability) per row."""
    h = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / np.log(p.shape[1])
    top2 = np.sort(p, axis=1)[:, -2:]
    return h, top2[:, 1] - top2[:, 0]


def inspect_cache(cache: Cache, teachers: list[str] | None = None, verify: bool = False) -> dict:
    """A JSON-ready report: plans, then per teacher rows/shards/bytes/completeness/confidence,
    then pairwise argmax agreement between teachers of the same plan."""
    manifests = [m for m in cache.manifests()
                 if not teachers or m.name in teachers or m.teacher_id in teachers]
    plans = {pid: cache.load_plan(pid) for pid in {m.plan_id for m in manifests} | set(cache.plan_ids())}
    report = {"cache": cache.location,
              "plans": [{"plan_id": p.plan_id, "source": p.source, "rows": p.rows,
                         "shards": len(p.shards), "skipped_empty": p.skipped.empty,
                         "skipped_non_string": p.skipped.non_string} for p in plans.values()],
              "teachers": [], "agreement": []}
    predictions: dict[str, dict[int, np.ndarray]] = {}
    for m in manifests:
        stats, preds = _teacher_stats(cache, m, len(plans[m.plan_id].shards), verify)
        report["teachers"].append(stats)
        predictions[m.teacher_id] = preds
    for a, b in combinations(manifests, 2):
        if a.plan_id == b.plan_id:
            report["agreement"].append(_agreement(a, b, predictions))
    return report


def _teacher_stats(cache: Cache, m: TeacherManifest, plan_shards: int, verify: bool):
    entries = cache.published_shards(m.teacher_id)
    problems = [p for e in entries.values() if (p := cache.shard_problem(m.teacher_id, e, verify))]
    entropy_sum = margin_sum = rows_scored = 0.0
    mc_entropy = []
    preds: dict[int, np.ndarray] = {}
    for index in sorted(entries):
        if any(entries[index].file in p for p in problems):
            continue
        table = cache.read_shard(m.teacher_id, index)
        logits = to_matrix(table.column("logits"))
        ok = np.isfinite(logits).all(axis=1)
        p = probabilities(logits[ok])
        h, margin = confidence(p)
        entropy_sum += h.sum()
        margin_sum += margin.sum()
        rows_scored += ok.sum()
        pred = np.full(len(logits), -1)
        pred[ok] = p.argmax(axis=1) if logits.shape[1] > 1 else p[:, 1] > 0.5
        preds[index] = pred
        if "mc_entropy" in table.column_names:
            mc_entropy.append(table.column("mc_entropy").to_numpy(zero_copy_only=False))
    stats = {"name": m.name, "teacher_id": m.teacher_id, "plan_id": m.plan_id,
             "model": m.settings.get("model"), "num_labels": m.settings.get("num_labels"),
             "rows": sum(e.rows for e in entries.values()), "shards": len(entries),
             "plan_shards": plan_shards, "bytes": sum(e.bytes for e in entries.values()),
             "complete": m.complete and len(entries) == plan_shards and not problems,
             "truncated_rows": sum(e.truncated for e in entries.values()),
             "nonfinite_rows": sum(e.nonfinite for e in entries.values()),
             "mean_entropy": _mean(entropy_sum, rows_scored),
             "mean_margin": _mean(margin_sum, rows_scored),
             "problems": problems}
    if mc_entropy:
        stats["mean_mc_entropy"] = float(np.nanmean(np.concatenate(mc_entropy)))
    return stats, preds


def _mean(total: float, count: float) -> float | None:
    return float(total / count) if count else None


def _agreement(a: TeacherManifest, b: TeacherManifest, predictions) -> dict:
    if a.settings.get("labels") != b.settings.get("labels"):
        return {"a": a.name, "b": b.name, "rows": 0, "agreement": None,
                "note": "different label sets"}
    same = rows = 0
    for index, pa_ in predictions[a.teacher_id].items():
        pb = predictions[b.teacher_id].get(index)
        if pb is None:
            continue
        both = (pa_ >= 0) & (pb >= 0)
        same += int((pa_[both] == pb[both]).sum())
        rows += int(both.sum())
    return {"a": a.name, "b": b.name, "rows": rows, "agreement": same / rows if rows else None}
