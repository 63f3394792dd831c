"""Ranking metrics per query group: MRR@10, NDCG@10, Recall@k (numpy only).

Shared by the training report (pipeline/kinds/classification/evaluate.py) and `distill inspect --labels`, so a
teacher's ranking figures are computed one way wherever they are shown. Relevance labels may
be binary (0/1) or graded (0, 1, 2, ...): a candidate is relevant when its label is > 0, and
NDCG's gain is 2^label − 1 with the usual log2 discount, against the ideal order of the
group's own labels.

Two kinds of group cannot be ranked and are counted instead of scored: a group with one
candidate (its order is fixed), and a group without a relevant candidate (every metric is 0
whatever the model does). Equal scores are ordered with the least relevant candidate first,
so a model that scores everything alike ranks the relevant ones last, never first because of
the file's order.
"""

from __future__ import annotations

import numpy as np

CUTOFF = 10
RECALL_AT = (1, 5, 10)


def ranking_metrics(scores, relevance, groups, cutoff: int = CUTOFF,
                    recall_at: tuple[int, ...] = RECALL_AT) -> dict:
    """Mean over scorable groups of MRR@cutoff, NDCG@cutoff and Recall@k for each k, plus
    the counts of groups scored and left out (and why). `scores`, `relevance` and `groups`
    are per candidate; group keys may be any hashable values."""
    scores = np.asarray(scores, dtype=np.float64)
    relevance = np.asarray(relevance, dtype=np.float64)
    _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    members = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[members])) + 1
    sums = {"mrr": 0.0, "ndcg": 0.0, **{f"recall@{k}": 0.0 for k in recall_at}}
    single = no_relevant = scored = 0
    for rows in np.split(members, bounds):
        if len(rows) < 2:
            single += 1
            continue
        rel = relevance[rows]
        if not (rel > 0).any():
            no_relevant += 1
            continue
        scored += 1
        ranked = rel[np.lexsort((rel, -scores[rows]))]      # by score, ties: least relevant first
        for key, value in _group_metrics(ranked, cutoff, recall_at).items():
            sums[key] += value
    means = {k: (v / scored if scored else None) for k, v in sums.items()}
    return {f"mrr@{cutoff}": means.pop("mrr"), f"ndcg@{cutoff}": means.pop("ndcg"), **means,
            "groups": scored, "groups_single_candidate": single,
            "groups_without_relevant": no_relevant}


def _group_metrics(ranked: np.ndarray, cutoff: int, recall_at: tuple[int, ...]) -> dict:
    """The metrics of one group from its labels in ranked order."""
    relevant = ranked > 0
    first = int(np.argmax(relevant))
    discount = 1.0 / np.log2(np.arange(2, cutoff + 2))
    gains = (2.0 ** ranked - 1.0)[:cutoff]
    ideal = (2.0 ** np.sort(ranked)[::-1] - 1.0)[:cutoff]
    return {"mrr": 1.0 / (first + 1) if first < cutoff else 0.0,
            "ndcg": float(gains @ discount[:len(gains)] / (ideal @ discount[:len(ideal)])),
            **{f"recall@{k}": float(relevant[:k].sum() / relevant.sum()) for k in recall_at}}
