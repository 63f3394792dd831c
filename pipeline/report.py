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
    for key, value in report.get("eval", {}).items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    history = report["history"]
    if history:
        lines += ["", "| step | loss |", "|---|---|"]
        every = max(1, len(history) // 20)
        lines += [f"| {h['step']} | {h['loss']:.4f} |" for h in history[::every]]
    return "\n".join(lines) + "\n"


def measured_on(report: dict) -> list[str]:
    """Which rows the metrics come from: agreement on training rows is not a held-out score."""
    lines = []
    if "ensemble_agreement_on" in report:
        lines.append(f"- ensemble_agreement: measured on {report['ensemble_agreement_on']}")
    if report.get("eval", {}).get("eval_rows"):
        lines.append(f"- accuracy: on the labelled `eval` file ({report['eval']['eval_rows']} rows)")
    return lines


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
