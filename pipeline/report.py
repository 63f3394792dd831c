"""The training report, as JSON for machines and Markdown for people."""

from __future__ import annotations

import json
from pathlib import Path


def markdown(report: dict) -> str:
    lines = [f"# Student report: {report['method']}", "",
             f"- teachers: {', '.join(report['teachers'])} (plan {report['plan_id']})",
             f"- labels: {len(report['labels'])}" if "labels" in report
             else f"- vocabulary: {report.get('vocab_size')} tokens (token-level distillation)",
             f"- steps: {report['steps']} in {report['train_seconds']:.1f} s of training (all "
             f"legs, resumes included) on {report['processes']} process(es)",
             *measured_on(report), *([f"- folder: {report['output']}"] if "output" in report else []),
             "", "| metric | value |", "|---|---|"]
    for key, value in scalar_metrics(report.get("eval", {})).items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    compared = side_by_side(report)
    if compared:
        lines += ["", f"## On the eval set ({report['eval']['eval_rows']} rows)", "",
                  "| model | accuracy | macro-F1 |", "|---|---|---|"]
        lines += [f"| {name} | {s['accuracy']:.4f} | "
                  f"{format(s['macro_f1'], '.4f') if 'macro_f1' in s else '-'} |" for name, s in compared]
    lines += ranking_table(report.get("eval", {}))
    history = report["history"]
    if history:
        lines += ["", "| step | loss |", "|---|---|"]
        every = max(1, len(history) // 20)
        lines += [f"| {h['step']} | {h['loss']:.4f} |" for h in history[::every]]
    return "\n".join(lines) + "\n"


def ranking_table(ev: dict) -> list[str]:
    """Each teacher's, the ensemble's and the student's ranking metrics on the eval groups."""
    ranking = ev.get("ranking")
    if not ranking:
        return []
    rows = ranking_rows(ranking)
    keys = [k for k in ranking["student"] if "@" in k]
    first = ranking["student"]
    skipped = (f"; not ranked: {first['groups_single_candidate']} groups with one candidate, "
               f"{first['groups_without_relevant']} without a relevant one")
    lines = ["", f"## Ranking on the eval set ({first['groups']} query groups{skipped})", "",
             "Teachers and their ensemble rank by their calibrated scores (`teachers[].calibration`), "
             "as training reads them.", "",
             "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join("-" if r[k] is None else f"{r[k]:.4f}" for k in keys) + " |"
              for name, r in rows]
    return lines


def ranking_rows(ranking: dict) -> list[tuple[str, dict]]:
    """(model, ranking metrics): each teacher, the ensemble, the student."""
    return [*((f"teacher {n}", r) for n, r in ranking["teachers"].items()),
            ("ensemble (mean of calibrated scores)", ranking["ensemble"]), ("student", ranking["student"])]


def measured_on(report: dict) -> list[str]:
    """Which rows the metrics come from: agreement on training rows is not a held-out score."""
    lines = []
    if "ensemble_agreement_on" in report:
        lines.append(f"- ensemble_agreement: measured on {report['ensemble_agreement_on']}")
    ev = report.get("eval", {})
    if ev.get("eval_rows"):
        lines.append(f"- accuracy: on the labelled `eval` file ({ev['eval_rows']} rows){not_scored(ev)}")
    return lines


def not_scored(ev: dict) -> str:
    """The eval rows left out of every score, and why: counted, never dropped unseen."""
    parts = []
    if ev.get("eval_rows_outside_labels"):
        labels = ", ".join(f"{label} ({n})" for label, n in ev["outside_labels"].items())
        parts.append(f"{ev['eval_rows_outside_labels']} rows whose label is not a student class "
                     f"are not scored: {labels}")
    if ev.get("eval_rows_without_text"):
        parts.append(f"{ev['eval_rows_without_text']} rows without text are not scored")
    return "; " + "; ".join(parts) if parts else ""


def scalar_metrics(ev: dict) -> dict:
    """The eval entries that are one value each (the per-model scores are a table of their own)."""
    return {k: v for k, v in ev.items() if not isinstance(v, dict)}


def side_by_side(report: dict) -> list[tuple[str, dict]]:
    """(model, scores) on the same eval rows: each teacher, their ensemble, the student. A teacher
    that predicts only some of the student's classes (label maps) says so in its name."""
    ev = report.get("eval", {})
    if "ensemble" not in ev:
        return []
    classes = len(report.get("labels", []))
    teachers = [(f"teacher {name}" + (f" ({s['classes']} of {classes} classes)"
                                      if s["classes"] < classes else ""), s)
                for name, s in ev["teachers"].items()]
    student = {k: ev[k] for k in ("accuracy", "macro_f1") if k in ev}
    return [*teachers, ("ensemble (mean of probabilities)", ev["ensemble"]), ("student", student)]


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
