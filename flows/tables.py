"""Rich tables for what the command line prints."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _fmt(value, spec=".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict, console: Console) -> None:
    plans = Table("plan", "source", "rows", "shards", "skipped empty", "skipped non-string",
                  title=f"cache {report['cache']}")
    for p in report["plans"]:
        plans.add_row(p["plan_id"], p["source"], f"{p['rows']:,}", str(p["shards"]),
                      str(p["skipped_empty"]), str(p["skipped_non_string"]))
    console.print(plans)
    teachers = Table("teacher", "id", "plan", "rows", "shards", "MiB", "complete", "truncated",
                     "non-finite", "entropy", "margin", "MC entropy")
    for t in report["teachers"]:
        teachers.add_row(t["name"], t["teacher_id"], t["plan_id"], f"{t['rows']:,}",
                         f"{t['shards']}/{t['plan_shards']}", f"{t['bytes'] / 2**20:.2f}",
                         "yes" if t["complete"] else "[red]no[/]", str(t["truncated_rows"]),
                         str(t["nonfinite_rows"]), _fmt(t["mean_entropy"]), _fmt(t["mean_margin"]),
                         _fmt(t.get("mean_mc_entropy")))
    console.print(teachers)
    for t in report["teachers"]:
        for problem in t["problems"]:
            console.print(f"[yellow]problem[/] {t['name']}: {problem}")
    if report["agreement"]:
        agree = Table("teacher", "teacher", "rows", "argmax agreement", title="pairwise agreement")
        for a in report["agreement"]:
            agree.add_row(a["a"], a["b"], f"{a['rows']:,}", _fmt(a["agreement"]) + (
                f" ({a['note']})" if a.get("note") else ""))
        console.print(agree)


def print_cache_summary(summaries: list[dict], cache: str, console: Console) -> None:
    table = Table("teacher", "teacher id", "rows", "shards", "computed", "recomputed", "MiB",
                  title=f"cache {cache}")
    for s in summaries:
        table.add_row(s["teacher"], s["teacher_id"], f"{s['rows']:,}", str(s["shards"]),
                      str(s["computed"]), str(s["recomputed"]), f"{s['bytes'] / 2**20:.2f}")
    console.print(table)


def print_train_summary(summary: dict, console: Console) -> None:
    table = Table("method", "steps", "seconds", *summary.get("eval", {}).keys(), title="student")
    table.add_row(summary["method"], str(summary["steps"]), f"{summary['train_seconds']:.1f}",
                  *(_fmt(v) if isinstance(v, float) else str(v) for v in summary.get("eval", {}).values()))
    console.print(table)


def print_continual_summary(summary: dict, console: Console) -> None:
    """The accuracy matrix: row i = after training task i, column j = accuracy on task j."""
    tasks = summary["tasks"]
    table = Table("after \\ on", *tasks, title=f"continual student ({summary['mode']}): "
                  "class-incremental accuracy per task")
    for name, row in zip(tasks if len(summary["matrix"]) == len(tasks) else ["all (joint)"],
                         summary["matrix"]):
        table.add_row(name, *(_fmt(a) for a in row))
    console.print(table)
    console.print(f"average accuracy {summary['average_accuracy']:.3f}, forgetting "
                  f"{_fmt(summary['forgetting'])}, {summary['steps']} steps in "
                  f"{summary['train_seconds']:.1f} s")


def print_calibration(fits: list[dict], console: Console) -> None:
    table = Table("teacher", "fit", "rows", "scale", "bias", "accuracy", "NLL before → after",
                  "ECE before → after", title="calibration on the eval set")
    for f in fits:
        if f["kind"] == "temperature":
            nll = f"{f['nll_before']:.3f} → {f['nll_after']:.3f}"
            ece = f"{f['ece_before']:.3f} → {f['ece_after']:.3f}"
            accuracy = _fmt(f["accuracy"])
        else:
            nll, ece, accuracy = f"{f['loss_before']:.3f} → {f['loss_after']:.3f}", "-", "-"
        table.add_row(f["teacher"], f"{f['kind']}" + (f" T={f['temperature']:.3f}" if "temperature" in f else ""),
                      str(f["rows"]), f"{f['scale']:.4f}", f"{f['bias']:.4f}", accuracy, nll, ece)
    console.print(table)
