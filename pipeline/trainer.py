"""Train a student from teacher caches: the kind's recipe (pipeline/kinds/) run by the shared loop.

The loop is the shared one of pipeline/loop.py (accelerate, DDP, checkpoints, exact resume).
Teachers are never loaded: everything they contribute comes from the cache. Each method's run
has its own folder, `train.output/METHOD`, so trying another method never replaces a student.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.pipeline.caches import open_caches
from distill.pipeline.config import DistillConfig, TrainConfig
from distill.pipeline.kinds import imported, training_kind
from distill.pipeline.loop import Loop, Progress, linear_warmup, make_accelerator, prepare, start_over
from distill.pipeline.stream import prefetch
from distill.storage.aligned import AlignedCache


def run_folder(config: DistillConfig, method: str) -> Path:
    """Where a method's student, report and checkpoints go: `train.output` holds one run per
    method, so `--method median` next to a mean run leaves the mean student alone."""
    return Path((config.train or TrainConfig()).output) / method


def run_settings(config: DistillConfig, method: str, aligned: AlignedCache, processes: int) -> dict:
    """Everything that decides a run's schedule and weights: a checkpoint made with other
    settings cannot be resumed by this run. Where checkpoints go and how often are not among
    them."""
    train_cfg = config.train or TrainConfig()
    return {"method": method, "teacher_ids": [m.teacher_id for m in aligned.manifests],
            "plan_id": aligned.plan.plan_id, "processes": processes,
            "student": config.student.model_dump(mode="json") if config.student else None,
            "train": train_cfg.model_dump(mode="json", exclude={"method", "output", "checkpoint_every"})}


def train(config: DistillConfig, *, method: str | None = None, resume: bool = False,
          max_steps: int | None = None, progress: Progress | None = None) -> dict:
    """Train, checkpoint, evaluate and save the student into `run_folder`; returns the report.

    `max_steps` stops early after that many optimizer steps (with a checkpoint), as an
    interrupted run would; `resume=True` continues from the latest checkpoint made with the
    same settings. The teachers' kind brings the recipe (pipeline/kinds/: what the student
    reads, its loss and its evaluation); the loop is the same for every kind.
    """
    from accelerate.utils import set_seed

    train_cfg = config.train or TrainConfig()
    method_name = method or train_cfg.method
    out = run_folder(config, method_name)
    accelerator = make_accelerator(train_cfg.mixed_precision)
    set_seed(train_cfg.seed)
    aligned = open_caches(config)
    folder = out / "checkpoints"
    if not resume:
        start_over(accelerator, folder, method_name)
    kind = training_kind(config.teachers, config.source)
    recipe = imported(kind.recipe)(config, aligned, method_name, accelerator)
    stream = recipe.stream
    optimizer = torch.optim.AdamW(recipe.param_groups, weight_decay=train_cfg.weight_decay)
    steps_per_epoch = -(-stream.batches_per_epoch() // train_cfg.grad_accumulation)
    total = steps_per_epoch * train_cfg.epochs
    model, optimizer, scheduler = prepare(accelerator, recipe.model, optimizer,
                                          linear_warmup(int(train_cfg.warmup_ratio * total), total))
    recipe.on_prepare(accelerator)

    settings = {**run_settings(config, method_name, aligned, accelerator.num_processes), **recipe.settings}
    cursor = Loop(accelerator, model, optimizer, scheduler, train_cfg.epochs, total,
                  batches=lambda epoch, first: prefetch(stream.epoch(epoch, first)), loss=recipe.loss,
                  folder=folder, settings=settings, checkpoint_every=train_cfg.checkpoint_every,
                  accumulation=train_cfg.grad_accumulation,
                  epoch_batches=lambda epoch: stream.batches_per_epoch(),
                  ).run(resume=resume, max_steps=max_steps, progress=progress)
    finished = cursor.epoch >= train_cfg.epochs
    report = {"method": method_name, "teachers": [m.name for m in aligned.manifests],
              "teacher_ids": [m.teacher_id for m in aligned.manifests], "plan_id": aligned.plan.plan_id,
              **recipe.report, "steps": cursor.step, "finished": finished,
              "train_seconds": cursor.train_seconds,
              "processes": accelerator.num_processes, "output": str(out),
              "config": config.model_dump(mode="json", exclude={"source"}),
              "coverage": cursor.coverage, "history": cursor.history}
    if finished and accelerator.is_main_process:
        student = accelerator.unwrap_model(model).eval()
        report["eval"] = recipe.evaluate(student)
        report["student"] = str(out / "student")
        _save_student(student, recipe.tokenizer, out, report)
    accelerator.wait_for_everyone()
    # Leave the process group before the interpreter exits: without it, in two launchers of the
    # multi-node example on one host, a rank aborted in teardown ("terminate called without an
    # active exception") after its work was done in 4 of 10 runs, and its launcher reported a
    # failure; 0 of 6 with it. A no-op in one process.
    accelerator.end_training()
    return report


def _save_student(model, tokenizer, out: Path, report: dict) -> None:
    from distill.pipeline.report import write_report

    model.save_pretrained(out / "student")
    tokenizer.save_pretrained(out / "student")
    write_report(out, report)
