"""Continual distillation: learn the config's tasks in order from their teacher caches.

Each task's teachers were cached over its own corpus slice (`distill cache CONFIG --task NAME`),
so a task is an ordinary single-corpus cache read by `CacheStream`, its teacher logits mapped
into the student's label space: the tasks' labels in task order. Per task (a "stage"), the
optimizer and schedule start afresh (as in the paper's code) and the student distils the task's
classes with `cdl_loss`. After each stage it is evaluated on the labelled `eval` rows of every
task seen so far, class-incrementally (argmax over all classes seen so far, with no task id),
which fills the accuracy matrix A[i][j] = accuracy on task j after training task i.

Modes: `prompts` is CDL-Prompt with an L2P pool and a frozen backbone; `finetune` trains the whole
plain classifier task after task with the same loss (the forgetting baseline); `joint` trains
once on all tasks' caches with all classes (the upper bound). In `prompts` mode, when teacher
caches carry prompt vectors (prompt-based teachers, pipeline/prompt_teacher.py), the student also
learns one attention-based mapping per such teacher (CDL-Prompt v1, `MappedPrompts`) unless
`continual.map_teacher_prompts` is false; evaluation then reads the teachers' vectors for the
eval rows from their cache of the `eval` file (`eval_prompt_vectors`), so no teacher is loaded.

Deviations from the paper (docs/continual.md): the teachers are frozen and cached once per
task instead of co-training with the student; no gold labels (CE on the teacher argmax); a text
encoder instead of a ViT; one process (no accelerate/DDP); no weight decay, because the head
rows of earlier classes get no gradient and weight decay alone would shrink them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from distill.pipeline.caches import open_caches
from distill.pipeline.config import ConfigError, ContinualConfig, DistillConfig, TrainConfig
from distill.pipeline.continual.loss import cdl_loss
from distill.pipeline.continual.prompts import MappedPrompts, PromptPool
from distill.pipeline.continual.student import ContinualStudent
from distill.pipeline.continual.teacher_prompts import eval_prompt_vectors, prompt_widths
from distill.pipeline.evaluate import predict, read_labelled
from distill.pipeline.labels import LabelSpace, build_label_space
from distill.pipeline.reader import CacheStream, prefetch
from distill.pipeline.student import build_student
from distill.pipeline.trainer import Progress, source_label_map, student_source, teacher_batch_to
from distill.storage.records import CacheError


@dataclass
class Task:
    name: str
    classes: torch.Tensor       # student class indices of this task's labels
    stream: CacheStream
    teacher_ids: list[str]


def task_labels(config: DistillConfig) -> list[str]:
    return [label for task in config.tasks for label in task.labels]


def open_tasks(config: DistillConfig, batch_size: int, seed: int) -> tuple[LabelSpace, list[Task]]:
    """Every task's complete caches, as streams in the shared label space (tasks in order)."""
    if not config.tasks:
        raise ConfigError(f"{config.source}: continual training needs a `tasks` list")
    labels = task_labels(config)
    maps = {t.name: t.label_map for t in config.teachers}
    space, tasks = None, []
    for task in config.tasks:
        try:
            aligned = open_caches(config.for_task(task.name))
        except CacheError as e:
            raise CacheError(f"task '{task.name}' has no complete teacher cache ({e}). Cache it "
                             f"with `distill cache {config.source} --task {task.name}`") from None
        space = build_label_space(aligned.manifests, labels, maps, config.source)
        classes = torch.tensor([labels.index(label) for label in task.labels])
        if not space.covered[:, classes].all(1).any():
            raise ConfigError(f"{config.source}: tasks[{task.name}].labels: no teacher predicts all of "
                              f"{task.labels}; map teacher classes onto them with teachers[].label_map")
        stream = CacheStream(aligned, space, batch_size, seed=seed, group_by_length=True)
        tasks.append(Task(task.name, classes, stream, [m.teacher_id for m in aligned.manifests]))
    return space, tasks


def summarize(matrix: list[list[float | None]]) -> dict:
    """Average accuracy over all tasks after the last stage, and forgetting: per earlier task, the
    best accuracy it had after an earlier stage minus its final accuracy, averaged (Chaudhry et
    al. 2018, as in L2P/CODA). None where undefined (a single stage has nothing to forget)."""
    final = [a for a in matrix[-1] if a is not None]
    drops = [max(row[j] for row in matrix[:-1] if row[j] is not None) - matrix[-1][j]
             for j in range(len(matrix[-1])) if len(matrix) > 1 and matrix[-2][j] is not None]
    return {"average_accuracy": float(np.mean(final)),
            "forgetting": float(np.mean(drops)) if drops else None}


def _stage_batches(tasks: list[Task], epoch: int, seed: int):
    """One epoch over the stage's tasks: each task's batches in its own order, the tasks'
    batches interleaved in a seeded order (joint training sees every task throughout)."""
    iters = [prefetch(t.stream.epoch(epoch)) for t in tasks]
    order = np.repeat(np.arange(len(tasks)), [t.stream.batches_per_epoch() for t in tasks])
    np.random.default_rng([seed, epoch]).shuffle(order)
    for k in order:
        yield next(iters[k])


def _build(config: DistillConfig, space: LabelSpace, settings: ContinualConfig, mode: str,
           prompted: list[tuple[str, int]]):
    """The student; in `prompts` mode with a pool, and with a mapping for each of the `prompted`
    teachers (name, prompt width) when `map_teacher_prompts` is on."""
    source, layers, pick = student_source(config)
    model, tokenizer = build_student(source, space, layers, pick, source_label_map(config))
    if mode != "prompts":
        return ContinualStudent(model), tokenizer
    width = model.config.hidden_size
    pool = PromptPool(settings.pool_size, settings.prompt_length, settings.top_k, width, width)
    mapped = None
    if settings.map_teacher_prompts and prompted:
        names, widths = zip(*prompted)
        mapped = MappedPrompts(names, widths, width, settings.mapping_components, settings.mapping_length)
    slots = settings.top_k * settings.prompt_length + (mapped.slots if mapped else 0)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and config.student.max_length + slots > limit:
        mapping = f" + {len(mapped.teachers)} x continual.mapping_length" if mapped else ""
        raise ConfigError(f"{config.source}: student.max_length ({config.student.max_length}) + "
                          f"continual.top_k x prompt_length{mapping} ({slots}) exceeds the student's "
                          f"{limit} positions; shorten one of them")
    return ContinualStudent(model, pool, mapped), tokenizer


def _evaluate(student, tokenizer, config: DistillConfig, eval_rows, tasks: list[Task],
              seen: int) -> list[float | None]:
    """Accuracy on each of the first `seen` tasks, argmax over the classes seen so far.
    `eval_rows` = (texts, gold classes, teacher prompt vectors or None)."""
    texts, gold, prompts = eval_rows
    classes = torch.cat([t.classes for t in tasks[:seen]]).numpy()
    task_of = np.full(len(gold), -1)
    for j, task in enumerate(tasks):
        task_of[np.isin(gold, task.classes.numpy())] = j
    rows = np.flatnonzero((task_of >= 0) & (task_of < seen))
    student.eval()
    per_row = None if prompts is None else {"teacher_prompts": prompts[rows]}
    logits = predict(student, tokenizer, [texts[i] for i in rows], config.student.max_length,
                     per_row=per_row)
    pred = classes[logits[:, classes].argmax(1)]
    correct = pred == gold[rows]
    return [float(correct[task_of[rows] == j].mean()) if j < seen and (task_of[rows] == j).any()
            else None for j in range(len(tasks))]


def train_continual(config: DistillConfig, *, mode: str | None = None,
                    progress: Progress | None = None) -> dict:
    """Learn the tasks in order (or jointly), evaluate after each stage, save student and report."""
    train_cfg = config.train or TrainConfig()
    settings = config.continual or ContinualConfig()
    mode = mode or settings.mode
    if mode not in ("prompts", "finetune", "joint"):
        raise ConfigError(f"unknown continual mode '{mode}'; choose prompts, finetune or joint")
    if config.eval is None:
        raise ConfigError(f"{config.source}: continual training reports per-task accuracy; add "
                          "`eval: {path: ..., label_column: label}` with rows of the tasks' labels")
    progress = progress or Progress()
    torch.manual_seed(train_cfg.seed)
    space, tasks = open_tasks(config, train_cfg.batch_size, train_cfg.seed)
    student, tokenizer = _build(config, space, settings, mode,
                                prompt_widths(tasks[0].stream.aligned.manifests))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    student.to(device)
    texts, gold = read_labelled(config, space)
    mapped = student.mapped_teachers
    eval_rows = (texts, gold, eval_prompt_vectors(config, mapped, texts) if mapped else None)
    stages = [tasks] if mode == "joint" else [[t] for t in tasks]
    per_stage = [train_cfg.epochs * sum(t.stream.batches_per_epoch() for t in stage) for stage in stages]
    progress.start(sum(per_stage))
    started, step, history, matrix = time.perf_counter(), 0, [], []
    for i, (stage, total) in enumerate(zip(stages, per_stage)):
        classes = torch.cat([t.classes for t in stage]).to(device)
        body, new = student.parameter_groups()
        groups = [g for g in ({"params": body, "lr": train_cfg.lr},
                              {"params": new, "lr": train_cfg.head_lr or train_cfg.lr}) if g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(train_cfg.warmup_ratio * total), total)
        student.train()
        for epoch in range(train_cfg.epochs):
            for batch in _stage_batches(stage, epoch, train_cfg.seed):
                inputs = tokenizer(batch.texts, padding=True, truncation=True,
                                   max_length=config.student.max_length, return_tensors="pt").to(device)
                if mapped:
                    inputs["teacher_prompts"] = batch.teacher_prompts.to(device)
                out = student(**inputs)
                loss, metrics = cdl_loss(out.logits.float(), teacher_batch_to(batch.teachers, device),
                                         classes, train_cfg.temperature, settings.ce_weight,
                                         batch.weights.to(device))
                loss = loss + settings.match_weight * out.match_loss
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                metrics = {"loss": loss.item(), **metrics, "match": out.match_loss.item(), "stage": i}
                history.append({"step": step, **metrics})
                progress.step(step, metrics)
        seen = len(tasks) if mode == "joint" else i + 1
        matrix.append(_evaluate(student, tokenizer, config, eval_rows, tasks, seen))
    report = {"mode": mode, "tasks": [t.name for t in tasks], "labels": space.labels,
              "task_classes": [t.classes.tolist() for t in tasks],
              "teacher_ids": {t.name: t.teacher_ids for t in tasks}, "mapped_teachers": mapped,
              "matrix": matrix,
              **summarize(matrix), "steps": step, "train_seconds": time.perf_counter() - started,
              "config": config.model_dump(mode="json", exclude={"source"}), "history": history}
    out = Path(train_cfg.output)
    student.cpu().save(out / "student", tokenizer)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
