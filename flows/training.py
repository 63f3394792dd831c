"""Prefect flow `train-student`: train one student from complete teacher caches."""

from __future__ import annotations

from prefect import flow, get_run_logger

from distill.flows.artifacts import publish_training
from distill.flows.progress import reporter
from distill.flows.server import exit_with_parent
from distill.pipeline.config import DistillConfig, load_config
from distill.pipeline.continual.trainer import train_continual
from distill.pipeline.loop import Progress
from distill.pipeline.trainer import train


def progress_for(method: str) -> Progress:
    report = reporter()
    return Progress(start=lambda total: report.start("train", f"train {method}", total, unit="steps"),
                    step=lambda step, metrics: report.advance("train", 1))


@flow(name="train-student", on_running=[exit_with_parent])
def train_student(config: str | DistillConfig, method: str | None = None,
                  resume: bool = False) -> dict:
    """Stream the caches, ensemble the teachers with `method`, save student and report into
    train.output/METHOD, and publish the report (metrics table, loss curve) as Prefect
    artifacts."""
    config = config if isinstance(config, DistillConfig) else load_config(config)
    name = method or (config.train.method if config.train else "mean")
    report = train(config, method=method, resume=resume, progress=progress_for(name))
    publish_training(report)
    get_run_logger().info("student %s: %s, in %s", name, report.get("eval"),
                          report.get("student", f"{report['output']} (not finished)"))
    return {k: v for k, v in report.items() if k not in ("history", "config")}


@flow(name="train-continual", on_running=[exit_with_parent])
def train_continual_student(config: str | DistillConfig, mode: str | None = None,
                            resume: bool = False) -> dict:
    """Learn the config's tasks in order from their caches (`resume`: from the latest checkpoint
    of the same settings); report the task accuracy matrix."""
    config = config if isinstance(config, DistillConfig) else load_config(config)
    name = mode or (config.continual.mode if config.continual else "prompts")
    report = train_continual(config, mode=mode, resume=resume, progress=progress_for(f"continual {name}"))
    get_run_logger().info("continual %s: matrix %s, average accuracy %.4f, forgetting %s", name,
                          report["matrix"], report["average_accuracy"], report["forgetting"])
    return {k: v for k, v in report.items() if k not in ("history", "config")}
