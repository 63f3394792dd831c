"""An inspect report as titled tables of strings, shared by the terminal (rich) and the HTML
report, so both always show the same figures."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]]


def fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _percent(count: int, total: int) -> str:
    return f"{100 * count / total:.0f}%" if total else "-"


def sections(report: dict, text_width: int | None = None) -> list[Section]:
    """Every table of the report that has rows; `text_width` shortens example texts."""
    teachers = report["teachers"]
    classifiers = [t for t in teachers if "predicted" in t]   # kinds with classes (ClassStats)
    out = [
        Section(f"cache {report['cache']}",
                ["plan", "source", "rows", "shards", "skipped empty", "skipped non-string"],
                [[p["plan_id"], p["source"], f"{p['rows']:,}", str(p["shards"]),
                  str(p["skipped_empty"]), str(p["skipped_non_string"])] for p in report["plans"]]),
        Section("teachers", ["teacher", "kind", "id", "plan", "rows", "shards", "MiB", "complete",
                             "current"],
                [[t["title"], t["kind"], t["teacher_id"], t["plan_id"], f"{t['rows']:,}",
                  f"{t['shards']}/{t['plan_shards']}", f"{t['bytes'] / 2**20:.2f}",
                  "yes" if t["complete"] else "no", "yes" if t["current"] else "no"]
                 for t in teachers]),
        Section("rows and shards of note", ["teacher", "truncated rows", "failed rows (non-finite)",
                                            "rows skipped by the plan", "missing shards"],
                [[t["title"], str(t["truncated_rows"]), str(t["nonfinite_rows"]),
                  str(t["skipped_rows"]), _shard_list(t["missing_shards"])] for t in teachers]),
        Section("problems", ["teacher", "problem"],
                [[t["title"], p] for t in teachers for p in t["problems"]]),
        Section("caches of another cache format (never read; `distill gc CONFIG` removes them)",
                ["kind", "id", "format"],
                [[o["kind"], o["id"], str(o["format_version"])] for o in report.get("other_formats", [])]),
        Section("confidence", ["teacher", "mean entropy", "mean margin", "MC entropy",
                               "MC mutual info", "most predicted labels"],
                [[t["title"], fmt(t["mean_entropy"]), fmt(t["mean_margin"]),
                  fmt(t.get("mean_mc_entropy")), fmt(t.get("mean_mc_mutual_info")),
                  _top_labels(t["predicted"])] for t in classifiers]),
        Section("accuracy on the labelled rows", ["teacher", "labelled rows", "accuracy", "ECE",
                                                  "labels not in its classes"],
                [[t["title"], f"{t['accuracy']['rows']:,}", fmt(t["accuracy"]["accuracy"]),
                  fmt(t["accuracy"]["ece"]), str(t["accuracy"]["unknown_labels"])]
                 for t in classifiers if "accuracy" in t]),
        Section("ranking on the labelled groups", ["model", "groups", "MRR@10", "NDCG@10",
                                                   "Recall@1", "Recall@5", "Recall@10",
                                                   "not ranked (one candidate / no relevant)"],
                [_ranking_row(name, r) for name, r in ranking_rows(report)]),
        Section("causal-LM tokens", ["teacher", "sequences", "tokens", "tokens/sequence",
                                     "mean tail mass", "mean entropy (nats, tail as one token)",
                                     "padded head rows", "mass on them (mean / max)"],
                [[t["title"], f"{k['sequences']:,}", f"{k['tokens']:,}",
                  fmt(k["tokens_per_sequence"], ".1f"), fmt(k["mean_tail_mass"]),
                  fmt(k["mean_entropy_nats"]), f"{t['padded_head']['padded_rows']:,}",
                  f"{t['padded_head']['mean_mass']:.2g} / {t['padded_head']['max_mass']:.2g}"]
                 for t in teachers if (k := t.get("tokens"))]),
    ]
    out += [Section(f"argmax agreement, plan {plan_id}", ["", *names],
                    [[a, *(fmt(v) for v in row)] for a, row in zip(names, matrix)])
            for plan_id, names, matrix in agreement_matrices(report)]
    for group in report["disagreements"]:
        names = group["teachers"]
        out.append(Section(
            f"most disagreed-on texts ({', '.join(names)}; mean disagreement {fmt(group['mean'])})",
            ["disagreement", "text", *names, "label"],
            [[fmt(e["disagreement"]), _short(_pair_text(e), text_width),
              *(_prediction(e["predictions"].get(n)) for n in names), str(e.get("label", "-"))]
             for e in group["examples"]]))
    return [s for s in out if s.rows]


def ranking_rows(report: dict) -> list[tuple[str, dict]]:
    """(model, ranking metrics): each single-score teacher, then per plan their ensemble."""
    rows = [(t["title"], t["ranking"]) for t in report["teachers"] if "ranking" in t]
    rows += [(f"ensemble ({', '.join(r['teachers'])}; mean raw score)", r["ensemble"])
             for r in report.get("ranking", []) if len(r["teachers"]) > 1]
    return rows


def _ranking_row(name: str, r: dict) -> list[str]:
    return [name, str(r["groups"]), *(fmt(r[k]) for k in ("mrr@10", "ndcg@10", "recall@1",
                                                          "recall@5", "recall@10")),
            f"{r['groups_single_candidate']} / {r['groups_without_relevant']}"]


def _pair_text(example: dict) -> str:
    """An example's text; a pair's two texts with a separator between them."""
    return example["text"] + (f" ‖ {example['pair']}" if "pair" in example else "")


def agreement_matrices(report: dict) -> list[tuple[str, list[str], list[list[float | None]]]]:
    """Per plan with two or more comparable teachers: (plan id, teachers, K x K argmax
    agreement, 1 on the diagonal, None where label sets differ or no row was compared)."""
    out = []
    for plan_id in dict.fromkeys(a["plan_id"] for a in report["agreement"]):
        pairs = {(a["a"], a["b"]): a["agreement"] for a in report["agreement"] if a["plan_id"] == plan_id}
        names = list(dict.fromkeys(n for pair in pairs for n in pair))
        matrix = [[1.0 if a == b else pairs.get((a, b), pairs.get((b, a))) for b in names]
                  for a in names]
        out.append((plan_id, names, matrix))
    return out


def _prediction(p: dict | None) -> str:
    """A teacher's vote on an example; "-" where its cache lacks that shard (unfinished)."""
    return "-" if p is None else f"{p['label']} ({p['probability']:.2f})"


def _shard_list(indices: list[int]) -> str:
    if not indices:
        return "-"
    shown = ", ".join(map(str, indices[:8]))
    return shown + (f" (+{len(indices) - 8})" if len(indices) > 8 else "")


def _top_labels(predicted: dict[str, int], top: int = 3) -> str:
    total = sum(predicted.values())
    ranked = sorted(predicted.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {_percent(n, total)}" for name, n in ranked if n) or "-"


def _short(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[:width - 1] + "…"
