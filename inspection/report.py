"""What is in a cache: coverage, confidence, predicted labels, accuracy against an optional
labelled file, and how the teachers agree and where they disagree most.

One pass, plan by plan and shard index by shard index: every teacher's shard i is read once,
its statistics are added into fixed-size summaries, and the teachers of one plan are compared
row by row on it. Memory stays flat for caches of any size. numpy and pyarrow only (no torch),
so `distill inspect` works from the base install.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pyarrow as pa

from distill.inspection.ranking import ranking_metrics
from distill.inspection.summaries import Histogram, Reliability
from distill.inspection.tokens import TokenPayload
from distill.storage.cache import Cache
from distill.storage.columns import to_matrix
from distill.storage.fs import join
from distill.storage.records import CacheError, DamagedShard, Plan, TeacherManifest

EXAMPLES = 10
"""How many most-disagreed-on texts the report keeps per group of comparable teachers."""


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


def disagreement(probs: list[np.ndarray]) -> np.ndarray:
    """Per row, the teachers' mutual information H(mean p) - mean H(p), normalised by log C:
    0 when all teachers give the same distribution, larger the more they pull apart (the same
    quantity as `mc_mutual_info`, with teachers in place of dropout passes)."""
    spread = confidence(np.mean(probs, axis=0))[0] - np.mean([confidence(p)[0] for p in probs], axis=0)
    return np.clip(spread, 0.0, None)


def class_names(m: TeacherManifest) -> list[str]:
    """The names of a teacher's predicted classes; a single relevance score predicts its sign."""
    names = m.settings.get("labels") or []
    return ["score < 0", "score ≥ 0"] if m.settings.get("num_labels") == 1 else list(names)


@dataclass(frozen=True)
class NamedCache:
    """A teacher cache with the names the report and the SQL views give it.

    The *current* caches of a teacher name are those the config given to inspect uses (over
    its corpus and eval set), else per plan the newest complete one. Their SQL view is the
    teacher's name (one view over every plan, e.g. a pool and an eval set); every other cache
    of that name (older weights, settings or corpus) gets `name@<teacher-id prefix>`. `title`, the
    report's label and JSON key, is the view name where that view holds only this cache, else
    `name@<prefix>`: never shared."""

    m: TeacherManifest
    view: str
    title: str
    current: bool


def name_caches(cache: Cache, teachers: list[str] | None = None,
                used: set[str] | None = None) -> list[NamedCache]:
    """The teacher caches to inspect (all, or those named by name, label or teacher id), by
    name, current caches first; `used` holds the teacher ids a config uses."""
    manifests = cache.manifests()
    current = _current(cache, manifests, used or set())
    width = _id_width([m.teacher_id for m in manifests])
    short = {m.teacher_id: f"{m.name}@{m.teacher_id[:width]}" for m in manifests}
    views = {m.teacher_id: m.name if m.teacher_id in current else short[m.teacher_id]
             for m in manifests}
    shared = Counter(views.values())
    named = []
    for m in manifests:
        view = views[m.teacher_id]
        title = view if shared[view] == 1 else short[m.teacher_id]
        named.append(NamedCache(m, view, title, m.teacher_id in current))
    named.sort(key=lambda n: (n.m.name, not n.current, n.title))
    if not teachers:
        return named
    unknown = [t for t in teachers if not any(t in (n.m.name, n.m.teacher_id, n.title) for n in named)]
    if unknown:
        here = ", ".join(sorted({m.name for m in manifests})) or "none"
        raise CacheError(f"no teacher named or with id {', '.join(map(repr, unknown))} in "
                         f"{cache.location} (teachers here: {here}); check --teacher")
    return [n for n in named if {n.m.name, n.m.teacher_id, n.title} & set(teachers)]


def _current(cache: Cache, manifests: list[TeacherManifest], used: set[str]) -> set[str]:
    """The teacher ids of the current caches: of a name the config uses (`used`), exactly the
    caches it uses; of any other name, per plan, the newest complete cache (by when its
    manifest was last written: `finalize` rewrites it), else the newest."""
    current = {m.teacher_id for m in manifests if m.teacher_id in used}
    chosen_names = {m.name for m in manifests if m.teacher_id in current}
    groups: dict[tuple[str, str], list[TeacherManifest]] = {}
    for m in manifests:
        if m.name not in chosen_names:
            groups.setdefault((m.name, m.plan_id), []).append(m)
    for group in groups.values():
        newest = group[0] if len(group) == 1 else max(
            group, key=lambda m: (m.complete, _written(cache, m)))
        current.add(newest.teacher_id)
    return current


def _written(cache: Cache, m: TeacherManifest):
    return cache.fs.modified(join(cache.teacher_dir(m.teacher_id), "manifest.json"))


def _id_width(ids: list[str], shortest: int = 8) -> int:
    """The shortest prefix length (at least `shortest`) that tells all the ids apart."""
    width = shortest
    while len({i[:width] for i in ids}) < len(set(ids)):
        width += 1
    return width


def inspect_cache(cache: Cache, teachers: list[str] | None = None,
                  labels: dict[int, object] | None = None, examples: int = EXAMPLES,
                  used: set[str] | None = None, groups: dict[int, str] | None = None) -> dict:
    """A JSON-ready report: plans; per teacher cache (`name_caches`, with `used` the teacher
    ids of the config the caller names) coverage, confidence histograms, predicted
    labels, MC-dropout and per-token (causal LM) statistics, accuracy and calibration when
    `labels` ({sample_id: label}) are given; pairwise argmax agreement and the texts the
    teachers of one plan and label set disagree on most. With `groups` ({sample_id: query
    group}) single-score teachers are also scored as rankers (inspection/ranking.py), each on its
    own and, per plan, their ensemble (the mean of their raw, uncalibrated scores).

    Every shard is read, and so verified against its recorded sha256 (`Cache.read_shard`):
    a teacher is `complete` only when all of its shards are there and matched."""
    named = name_caches(cache, teachers, used)
    plans = {p.plan_id: p for p in cache.plans()}
    plans |= {pid: cache.load_plan(pid) for pid in sorted({n.m.plan_id for n in named} - set(plans))}
    plans = dict(sorted(plans.items()))
    stats = [_TeacherStats(cache, n, plans[n.m.plan_id], labels, groups) for n in named]
    comparisons = []
    for plan in plans.values():
        comparison = _PlanComparison(cache, plan, [s for s in stats if s.m.plan_id == plan.plan_id],
                                     labels, examples)
        for index in range(len(plan.shards)):
            probs = {s: s.add(table) for s in comparison.teachers
                     if (table := s.read(index)) is not None}
            comparison.add(index, probs)
        comparisons.append(comparison)
    report = {"cache": cache.location,
              "plans": [{"plan_id": p.plan_id, "source": p.source, "rows": p.rows,
                         "shards": len(p.shards), "skipped_empty": p.skipped.empty,
                         "skipped_non_string": p.skipped.non_string} for p in plans.values()],
              "teachers": [s.to_json() for s in stats],
              "agreement": [a for c in comparisons for a in c.agreement_json()],
              "ranking": [r for c in comparisons if (r := c.ranking_json(groups)) is not None],
              "disagreements": [d for c in comparisons for d in c.disagreements_json()],
              "other_formats": [{"kind": o.kind, "id": o.id, "format_version": o.version}
                                for o in cache.other_formats()]}
    if labels is not None:
        report["labelled_rows"] = len(labels)
    return report


class _TeacherStats:
    """Everything the report says about one teacher cache, added up shard by shard: what every
    kind shares here, the kind's own summary in `payload` (`PAYLOADS`)."""

    def __init__(self, cache: Cache, named: NamedCache, plan: Plan,
                 labels: dict[int, object] | None, groups: dict[int, str] | None = None):
        self.cache, self.named, self.m, self.title = cache, named, named.m, named.title
        self.plan = plan
        m = self.m
        self.entries = cache.published_shards(m.teacher_id)
        self.problems = {i: p for i, e in self.entries.items()
                         if (p := cache.shard_problem(m.teacher_id, e, checksum=False))}
        self.kind = m.settings.get("kind", "classification")
        self.payload = PAYLOADS[self.kind](m, self.entries, labels, groups)

    def read(self, index: int) -> pa.Table | None:
        """Shard `index`, verified as it is read; None (and a problem noted) if it is missing
        or damaged."""
        if index not in self.entries or index in self.problems:
            return None
        try:
            return self.cache.read_shard(self.m.teacher_id, self.entries[index])
        except DamagedShard as e:
            self.problems[index] = str(e)
            return None

    def add(self, table: pa.Table) -> np.ndarray | None:
        """Add one shard; return its class probabilities [rows, C] (NaN rows where the teacher
        failed) for the teachers' comparison, or None for a kind that has no classes."""
        return self.payload.add(table)

    def to_json(self) -> dict:
        m, entries = self.m, self.entries
        missing = [i for i in range(len(self.plan.shards)) if i not in entries]
        return {"name": m.name, "title": self.title, "view": self.named.view,
                "current": self.named.current, "teacher_id": m.teacher_id, "plan_id": m.plan_id,
                "kind": self.kind,
                "model": m.settings.get("model"), "num_labels": m.settings.get("num_labels"),
                "rows": sum(e.rows for e in entries.values()), "shards": len(entries),
                "plan_shards": len(self.plan.shards), "missing_shards": missing,
                "bytes": sum(e.bytes for e in entries.values()),
                "complete": m.complete and not missing and not self.problems,
                "truncated_rows": sum(e.truncated for e in entries.values()),
                "nonfinite_rows": sum(e.nonfinite for e in entries.values()),
                "skipped_rows": self.plan.skipped.total,
                "problems": list(self.problems.values()), **self.payload.to_json()}


class ClassStats:
    """The summary of a classification or score cache: confidence and MC-dropout histograms,
    predicted labels, accuracy and calibration on the labelled rows, and with query groups the
    teacher's ranking metrics."""

    compared = True   # its probabilities join the teachers' agreement and disagreement

    def __init__(self, m: TeacherManifest, entries: dict, labels: dict[int, object] | None,
                 groups: dict[int, str] | None):
        self.labels, self.groups = labels, groups
        self.ranked: dict[int, float] = {}     # with groups: sample id -> score of labelled rows
        self.scores = m.settings.get("num_labels") == 1
        self.class_names = class_names(m)
        self.histograms = {k: Histogram() for k in ("entropy", "margin", "mc_entropy", "mc_mutual_info")}
        self.predicted = Counter()
        self.reliability = Reliability() if labels is not None else None
        self.label_ids = np.fromiter(labels or (), np.int64, len(labels or ()))
        self.unknown_labels = 0

    def add(self, table: pa.Table) -> np.ndarray:
        logits = to_matrix(table.column("logits"))
        ok = np.isfinite(logits).all(axis=1)
        p = probabilities(logits[ok])
        h, margin = confidence(p)
        self.histograms["entropy"].add(h)
        self.histograms["margin"].add(margin)
        for column in ("mc_entropy", "mc_mutual_info"):
            if column in table.column_names:
                self.histograms[column].add(table.column(column).to_numpy(zero_copy_only=False))
        pred = p.argmax(axis=1)
        self.predicted.update(pred.tolist())
        if self.reliability is not None:
            self._score_labels(table.column("sample_id").to_numpy()[ok], p, pred)
        if self.groups is not None and self.scores:
            ids = table.column("sample_id").to_numpy()[ok]
            hits = np.flatnonzero(np.isin(ids, self.label_ids))
            self.ranked.update(zip(ids[hits].tolist(), logits[ok][hits, 0].tolist()))
        full = np.full((len(logits), p.shape[1]), np.nan)
        full[ok] = p
        return full

    def _score_labels(self, ids: np.ndarray, p: np.ndarray, pred: np.ndarray) -> None:
        hits = np.flatnonzero(np.isin(ids, self.label_ids))
        gold = np.array([self._gold(self.labels[int(ids[i])]) for i in hits], dtype=np.int64)
        known = gold >= 0
        self.unknown_labels += int((~known).sum())
        rows = hits[known]
        self.reliability.add(p[rows].max(axis=1), pred[rows] == gold[known])

    def _gold(self, value: object) -> int:
        """The class index of a gold label (by name, or as an index), -1 if it is not one."""
        if self.scores:
            try:
                return int(float(value) >= 0.5)
            except (TypeError, ValueError):
                return -1
        if str(value) in self.class_names:
            return self.class_names.index(str(value))
        if isinstance(value, int) and 0 <= value < len(self.class_names):
            return value
        return -1

    def to_json(self) -> dict:
        h = self.histograms
        stats = {"mean_entropy": h["entropy"].mean, "mean_margin": h["margin"].mean,
                 "predicted": {name: self.predicted.get(i, 0) for i, name in enumerate(self.class_names)},
                 "histograms": {k: v.to_json() for k, v in h.items() if v.n}}
        if h["mc_entropy"].n:
            stats["mean_mc_entropy"] = h["mc_entropy"].mean
            stats["mean_mc_mutual_info"] = h["mc_mutual_info"].mean
        if self.reliability is not None:
            stats["accuracy"] = {**self.reliability.to_json(), "unknown_labels": self.unknown_labels}
        if self.ranked:
            stats["ranking"] = rank_scores(self.ranked, self.labels, self.groups)
        return stats


def rank_scores(scores: dict[int, float], labels: dict[int, object], groups: dict[int, str]) -> dict:
    """Ranking metrics of {sample_id: score} against the labelled relevance of those rows
    (rows without a group or a numeric label are left out, counted in `unranked_rows`)."""
    ids, values, gold, keys, left_out = [], [], [], [], 0
    for sid, score in scores.items():
        try:
            relevance = float(labels[sid])
        except (TypeError, ValueError):
            relevance = None
        if relevance is None or sid not in groups:
            left_out += 1
            continue
        ids.append(sid)
        values.append(score)
        gold.append(relevance)
        keys.append(groups[sid])
    return {**ranking_metrics(values, gold, keys), "unranked_rows": left_out}


class _PlanComparison:
    """Teachers of one plan compared row by row: pairwise argmax agreement, and per label set
    the distribution of their disagreement and the texts they disagree on most."""

    def __init__(self, cache: Cache, plan: Plan, teachers: list[_TeacherStats],
                 labels: dict[int, object] | None, examples: int):
        self.cache, self.plan, self.labels, self.examples = cache, plan, labels, examples
        self.teachers = teachers
        self.classifiers = classifiers = [s for s in teachers if s.payload.compared]
        self.pairs = {(a, b): [0, 0] for a, b in combinations(classifiers, 2)}
        groups: dict[tuple, list[_TeacherStats]] = {}
        for s in classifiers:
            groups.setdefault(tuple(s.payload.class_names), []).append(s)
        self.groups = [{"teachers": g, "histogram": Histogram(), "examples": []}
                       for g in groups.values() if len(g) > 1]

    def add(self, index: int, probs: dict[_TeacherStats, np.ndarray | None]) -> None:
        for (a, b), counts in self.pairs.items():
            same_classes = a.payload.class_names == b.payload.class_names
            if same_classes and probs.get(a) is not None and probs.get(b) is not None:
                both = np.isfinite(probs[a]).all(axis=1) & np.isfinite(probs[b]).all(axis=1)
                counts[0] += int((probs[a][both].argmax(1) == probs[b][both].argmax(1)).sum())
                counts[1] += int(both.sum())
        for group in self.groups:
            present = [s for s in group["teachers"] if probs.get(s) is not None]
            if len(present) > 1:
                self._add_group(group, index, present, [probs[s] for s in present])

    def _add_group(self, group: dict, index: int, teachers: list[_TeacherStats], probs: list) -> None:
        rows = np.flatnonzero(np.all([np.isfinite(p).all(axis=1) for p in probs], axis=0))
        if not len(rows):
            return
        probs = [p[rows] for p in probs]
        score = disagreement(probs)
        group["histogram"].add(score)
        top = [i for i in np.argsort(-score, kind="stable")[:self.examples] if score[i] > 0]
        if not top:
            return
        text = self.cache.read_text_shard(self.plan, index)
        texts, corpus_rows, ids = (text.column(c).to_pylist() for c in ("text", "row", "sample_id"))
        pairs = text.column("pair").to_pylist() if self.plan.pairs else None
        for i in top:
            r = int(rows[i])
            example = {"disagreement": float(score[i]), "text": texts[r], "row": corpus_rows[r],
                       "sample_id": ids[r], **({"pair": pairs[r]} if pairs else {}),
                       "predictions": {s.title: {"label": s.payload.class_names[int(p[i].argmax())],
                                                 "probability": float(p[i].max())}
                                       for s, p in zip(teachers, probs)}}
            if self.labels is not None and ids[r] in self.labels:
                example["label"] = self.labels[ids[r]]
            group["examples"].append(example)
        group["examples"] = sorted(group["examples"], key=lambda e: -e["disagreement"])[:self.examples]

    def ranking_json(self, groups: dict[int, str] | None) -> dict | None:
        """The ensemble of this plan's single-score teachers as a ranker: the mean of their raw
        scores over the labelled rows all of them scored (None without groups or scores)."""
        scorers = [s for s in self.classifiers if s.payload.ranked]
        if groups is None or not scorers:
            return None
        shared = set.intersection(*(set(s.payload.ranked) for s in scorers))
        mean = {sid: float(np.mean([s.payload.ranked[sid] for s in scorers])) for sid in shared}
        return {"plan_id": self.plan.plan_id, "teachers": [s.title for s in scorers],
                "ensemble": rank_scores(mean, self.labels, groups)}

    def agreement_json(self) -> list[dict]:
        out = []
        for (a, b), (same, rows) in self.pairs.items():
            entry = {"plan_id": self.plan.plan_id, "a": a.title, "b": b.title, "rows": rows,
                     "agreement": same / rows if rows else None}
            if a.payload.class_names != b.payload.class_names:
                entry["note"] = "different label sets"
            out.append(entry)
        return out

    def disagreements_json(self) -> list[dict]:
        return [{"plan_id": self.plan.plan_id, "teachers": [s.title for s in g["teachers"]],
                 "rows": g["histogram"].n, "mean": g["histogram"].mean,
                 "histogram": g["histogram"].to_json(), "examples": g["examples"]}
                for g in self.groups]


# Each teacher kind's summary, by the kind its manifest records (a new kind: one entry here and
# its summary class, torch-free like the rest of inspection/).
PAYLOADS = {"classification": ClassStats, "causal-lm": TokenPayload}
