"""Rich tables for what the command line prints."""

from __future__ import annotations

import pyarrow as pa
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from distill.inspection.sections import fmt, sections
from distill.pipeline.report import not_scored, ranking_rows, scalar_metrics, side_by_side


def print_report(report: dict, console: Console) -> None:
    """The inspect report's tables (inspection/sections.py), as the HTML report has them."""
    for section in sections(report, text_width=120):
        table = Table(*section.headers, title=section.title)
        for row in section.rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)


def print_rows(result: pa.Table, console: Console) -> None:
    """A SQL result: one column per result column, values as Python prints them."""
    table = Table(*result.column_names, caption=f"{result.num_rows:,} rows")
    for row in zip(*(column.to_pylist() for column in result.columns)):
        table.add_row(*(Text("NULL" if v is None else str(v)) for v in row))
    console.print(table)


def print_cache_summary(summaries: list[dict], cache: str, console: Console) -> None:
    table = Table("teacher", "teacher id", "rows", "shards", "computed", "recomputed",
                  "reused", "MiB", title=f"cache {cache}")
    for s in summaries:
        table.add_row(s["teacher"], s["teacher_id"], f"{s['rows']:,}", str(s["shards"]),
                      str(s["computed"]), str(s["recomputed"]), str(s.get("reused", 0)),
                      f"{s['bytes'] / 2**20:.2f}")
    console.print(table)


def print_removed(unused: list, cache: str, dry_run: bool, console: Console) -> None:
    """What `distill gc` removed (or, with --dry-run, would remove) and the bytes that frees."""
    verb = "would remove" if dry_run else "removed"
    table = Table("kind", "id", "teacher / corpus", "bytes", title=f"{verb} from {cache}")
    for u in unused:
        table.add_row(u.kind, u.id, Text(u.what), f"{u.bytes:,}")
    if unused:
        console.print(table)
    freed = sum(u.bytes for u in unused)
    teachers = sum(u.kind == "teacher" for u in unused)
    console.print(f"{verb} {teachers} teacher caches and {len(unused) - teachers} plans: "
                  f"{'would free' if dry_run else 'freed'} {freed:,} bytes ({freed / 2**20:.2f} MiB)")


def print_train_summary(summary: dict, console: Console) -> None:
    """The run's metrics, then each teacher, their ensemble and the student on the eval set."""
    metrics = scalar_metrics(summary.get("eval", {}))
    table = Table("method", "steps", "seconds", *metrics.keys(), title="student")
    table.add_row(summary["method"], str(summary["steps"]), f"{summary['train_seconds']:.1f}",
                  *(fmt(v) if isinstance(v, float) else str(v) for v in metrics.values()))
    console.print(table)
    compared = side_by_side(summary)
    if compared:
        ev = summary["eval"]
        table = Table("model", "accuracy", "macro-F1", title=f"on the eval set ({ev['eval_rows']} rows)",
                      caption=not_scored(ev).removeprefix("; ") or None)
        for name, scores in compared:
            table.add_row(Text(name), fmt(scores["accuracy"]), fmt(scores.get("macro_f1")))
        console.print(table)
    ranking = summary.get("eval", {}).get("ranking")
    if ranking:
        keys = [k for k in ranking["student"] if "@" in k]
        table = Table("model", *keys, title=f"ranking on the eval set "
                                            f"({ranking['student']['groups']} query groups)")
        for name, scores in ranking_rows(ranking):
            table.add_row(Text(name), *(fmt(scores[k]) for k in keys))
        console.print(table)


def print_continual_summary(summary: dict, console: Console) -> None:
    """The accuracy matrix: row i = after training task i, column j = accuracy on task j."""
    tasks = summary["tasks"]
    table = Table("after \\ on", *tasks, title=f"continual student ({summary['mode']}): "
                  "class-incremental accuracy per task")
    for name, row in zip(tasks if len(summary["matrix"]) == len(tasks) else ["all (joint)"],
                         summary["matrix"]):
        table.add_row(name, *(fmt(a) for a in row))
    console.print(table)
    console.print(f"average accuracy {summary['average_accuracy']:.3f}, forgetting "
                  f"{fmt(summary['forgetting'])}, {summary['steps']} steps in "
                  f"{summary['train_seconds']:.1f} s")


def print_calibration(fits: list[dict], console: Console) -> None:
    table = Table("teacher", "fit", "rows", "scale", "bias", "accuracy", "NLL before → after",
                  "ECE before → after", title="calibration on the eval set")
    for f in fits:
        if f["kind"] == "temperature":
            nll = f"{f['nll_before']:.3f} → {f['nll_after']:.3f}"
            ece = f"{f['ece_before']:.3f} → {f['ece_after']:.3f}"
            accuracy = fmt(f["accuracy"])
        else:
            nll, ece, accuracy = f"{f['loss_before']:.3f} → {f['loss_after']:.3f}", "-", "-"
        kind = f"{f['kind']}" + (f" T={f['temperature']:.3f}" if "temperature" in f else "")
        table.add_row(f["teacher"], kind,
                      str(f["rows"]), f"{f['scale']:.4f}", f"{f['bias']:.4f}", accuracy, nll, ece)
    console.print(table)
    for f in fits:
        if "warning" in f:
            console.print(f"[yellow]warning:[/] {escape(f['warning'])}", highlight=False, soft_wrap=True)
