"""Prefect artifacts, so the Prefect UI shows what a run produced: per finished teacher cache a
table of its shards and a markdown summary, per training run its metrics and its report with
the loss curve. Each key gets a new version per run, so the UI keeps the history."""

from __future__ import annotations

import base64
import hashlib
import re

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from distill.inspection.report import inspect_cache
from distill.inspection.sections import sections
from distill.pipeline.report import markdown, scalar_metrics
from distill.storage.cache import Cache
from distill.storage.records import TeacherManifest


def artifact_key(*parts: str) -> str:
    """Prefect keys allow only lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def cache_keys(manifest: TeacherManifest) -> tuple[str, str]:
    """(table key, summary key) of a teacher cache: by teacher name and corpus plan."""
    key = artifact_key("teacher-cache", manifest.name, manifest.plan_id[:8])
    return key, f"{key}-summary"


def publish_cache(cache: Cache, manifest: TeacherManifest, computed: int, recomputed: int) -> None:
    table_key, summary_key = cache_keys(manifest)
    create_table_artifact(
        key=table_key, description=f"teacher `{manifest.name}` ({manifest.teacher_id}) over plan "
                                   f"{manifest.plan_id}: one row per shard",
        table=[{"shard": e.index, "rows": e.rows, "MiB": round(e.bytes / 2**20, 3),
                "truncated": e.truncated, "non-finite": e.nonfinite, "sha256": e.sha256[:16]}
               for e in manifest.shards])
    report = inspect_cache(cache, [manifest.teacher_id])
    stats = next(t for t in report["teachers"] if t["teacher_id"] == manifest.teacher_id)
    lines = [f"# Teacher cache `{manifest.name}`", "", "| | |", "|---|---|",
             f"| teacher id | `{manifest.teacher_id}` |", f"| plan | `{manifest.plan_id}` |",
             f"| model | `{manifest.settings.get('model')}` |",
             f"| rows | {stats['rows']:,} (plus {stats['skipped_rows']} skipped in the plan) |",
             f"| shards | {stats['shards']} ({computed} computed, {recomputed} recomputed in this run) |",
             f"| size | {stats['bytes'] / 2**20:.2f} MiB |",
             f"| truncated rows | {stats['truncated_rows']} |",
             f"| failed rows (non-finite, stored as null) | {stats['nonfinite_rows']} |",
             f"| columns | {', '.join(f'`{k}` {v}' for k, v in manifest.columns.items())} |"]
    for section in sections(report):
        if section.title in ("confidence", "causal-LM tokens"):
            lines += [f"| {h} | {v} |" for h, v in zip(section.headers[1:], section.rows[0][1:])]
    lines += ["", f"More: `distill inspect {cache.location} --teacher {manifest.teacher_id} "
                  "--html report.html`"]
    create_markdown_artifact(key=summary_key, markdown="\n".join(lines) + "\n",
                             description=f"teacher cache {manifest.name}: summary")


def report_key(cache: Cache) -> str:
    """Key of the whole-cache report: by location (hashed: locations hold any characters)."""
    return artifact_key("cache-report", hashlib.sha256(cache.location.encode()).hexdigest()[:12])


def publish_report(cache: Cache, report: dict) -> None:
    """Every table `distill inspect` prints, as one markdown artifact."""
    lines = [f"# Cache `{cache.location}`", ""]
    for section in sections(report, text_width=80):
        lines += [f"## {section.title}", "", "| " + " | ".join(section.headers) + " |",
                  "|" + "---|" * len(section.headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in section.rows]
        lines.append("")
    create_markdown_artifact(key=report_key(cache), markdown="\n".join(lines),
                             description=f"what is in the cache at {cache.location}")


def training_keys(method: str) -> tuple[str, str]:
    """(metrics table key, report key) of a training run: by method."""
    key = artifact_key("student", method)
    return f"{key}-metrics", f"{key}-report"


def publish_training(report: dict) -> None:
    metrics_key, report_key = training_keys(report["method"])
    rows = {"steps": report["steps"], "finished": report["finished"],
            "train_seconds": round(report["train_seconds"], 1),
            **scalar_metrics(report.get("eval", {}))}
    create_table_artifact(key=metrics_key, description=f"student `{report['method']}`: metrics",
                          table=[{"metric": k, "value": round(v, 4) if isinstance(v, float) else v}
                                 for k, v in rows.items()])
    text = markdown(report)
    if report["history"]:
        from distill.inspection.plots import loss_curve  # matplotlib: ~1 s a caching run never needs

        png = loss_curve(report["history"], f"training loss, {report['method']}")
        text += ("\n## Loss curve\n\n![training loss per step](data:image/png;base64,"
                 f"{base64.b64encode(png).decode('ascii')})\n")
    create_markdown_artifact(key=report_key, markdown=text,
                             description=f"student `{report['method']}`: report")
