"""Continual distillation: learn the config's tasks in order from their teacher caches.

Each task's teachers were cached over its own corpus slice (`distill cache CONFIG --task NAME`),
so a task is an ordinary single-corpus cache read by `ClassificationStream`, its teacher logits mapped
into the student's label space: the tasks' labels in task order. Per task (a "stage"), the
optimizer and schedule start afresh (as in the paper's code) and the student distils the task's
classes with `cdl_loss`. After each stage it is evaluated on the labelled `eval` rows of every
task seen so far, class-incrementally (argmax over all classes seen so far, with no task id),
which fills the accuracy matrix A[i][j] = accuracy on task j after training task i.

Modes: `prompts` is CDL-Prompt with an L2P pool and a frozen backbone; `finetune` trains the whole
plain classifier task after task with the same loss (the forgetting baseline); `joint` trains
once on all tasks' caches with all classes (the upper bound). In `prompts` mode, when teacher
caches carry prompt vectors (prompt-based teachers, pipeline/kinds/prompt/teacher.py), the student also
learns one attention-based mapping per such teacher (CDL-Prompt v1, `MappedPrompts`) unless
`continual.map_teacher_prompts` is false; evaluation then reads the teachers' vectors for the
eval rows from their cache of the `eval` file (`eval_prompt_vectors`), so no teacher is loaded.

Deviations from the paper (docs/continual.md): the teachers are frozen and cached once per
task instead of co-training with the student; no gold labels (CE on the teacher argmax); a text
encoder instead of a ViT; no weight decay, because the head rows of earlier classes get no
gradient and weight decay alone would shrink them.

The stages run as one run of the shared loop (pipeline/loop.py, `Curriculum`): checkpoints,
exact resume (`distill train CONFIG --resume`) and DDP as for any student.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.pipeline.caches import open_caches
from distill.pipeline.config import ConfigError, ContinualConfig, DistillConfig, TrainConfig
from distill.pipeline.continual.loss import cdl_loss
from distill.pipeline.continual.prompts import MappedPrompts, PromptPool
from distill.pipeline.continual.student import ContinualStudent
from distill.pipeline.continual.teacher_prompts import eval_prompt_vectors, prompt_widths
from distill.pipeline.kinds.classification.evaluate import predict, read_labelled
from distill.pipeline.kinds.classification.labels import LabelSpace, build_label_space
from distill.pipeline.kinds.classification.recipe import source_label_map, teacher_batch_to
from distill.pipeline.kinds.classification.stream import ClassificationStream
from distill.pipeline.loop import Loop, Progress, linear_warmup, make_accelerator, prepare, start_over
from distill.pipeline.methods import MethodOutput
from distill.pipeline.recipe import student_source
from distill.pipeline.stream import prefetch
from distill.pipeline.student import build_student
from distill.storage.records import CacheError


@dataclass
class Task:
    name: str
    classes: torch.Tensor       # student class indices of this task's labels
    stream: ClassificationStream
    teacher_ids: list[str]


def task_labels(config: DistillConfig) -> list[str]:
    return [label for task in config.tasks for label in task.labels]


def open_tasks(config: DistillConfig, batch_size: int, seed: int, rank: int = 0,
               world: int = 1) -> tuple[LabelSpace, list[Task]]:
    """Every task's complete caches, as streams in the shared label space (tasks in order), each
    split across the `world` processes (this one is `rank`)."""
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
        stream = ClassificationStream(aligned, space, batch_size, seed=seed, group_by_length=True,
                             rank=rank, world=world)
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


def _stage_batches(tasks: list[Task], epoch: int, seed: int, first: int = 0):
    """One epoch over the stage's tasks from batch `first` on: each task's batches in its own
    order, the tasks' batches interleaved in a seeded order (joint training sees every task
    throughout). A resumed epoch starts each task's stream past its batches among the `first`
    skipped ones, so nothing skipped is read."""
    order = np.repeat(np.arange(len(tasks)), [t.stream.batches_per_epoch() for t in tasks])
    np.random.default_rng([seed, epoch]).shuffle(order)
    skipped = np.bincount(order[:first], minlength=len(tasks))
    iters = [prefetch(t.stream.epoch(epoch, int(n))) for t, n in zip(tasks, skipped)]
    for k in order[first:]:
        yield next(iters[k])


@dataclass
class Curriculum:
    """The stages of a continual run laid out as one run of the shared loop: stage i (a task,
    or every task when joint) is epochs [i·E, (i+1)·E) of E = `train.epochs`. Entering a stage
    empties the optimizer's state and its schedule starts again (warmup, linear decay over the
    stage's steps): a fresh AdamW and schedule per task, as in the paper's code, yet one
    optimizer and scheduler for accelerate to checkpoint and resume."""

    stages: list[list[Task]]
    epochs: int
    seed: int
    accumulation: int
    warmup_ratio: float
    stage: int = 0      # the stage being trained

    @property
    def total_epochs(self) -> int:
        return len(self.stages) * self.epochs

    def epoch_batches(self, epoch: int) -> int:
        return sum(t.stream.batches_per_epoch() for t in self.stages[epoch // self.epochs])

    def stage_steps(self) -> list[int]:
        return [self.epochs * -(-self.epoch_batches(i * self.epochs) // self.accumulation)
                for i in range(len(self.stages))]

    def schedule(self, step: int) -> float:
        """The learning-rate factor at optimizer step `step` of the whole run."""
        for total in self.stage_steps():
            if step < total:
                return linear_warmup(int(self.warmup_ratio * total), total)(step)
            step -= total
        return 0.0

    def batches(self, epoch: int, first: int):
        return _stage_batches(self.stages[epoch // self.epochs], epoch % self.epochs, self.seed, first)

    def enter(self, epoch: int, first: int, optimizer) -> None:
        """Before epoch `epoch` (from batch `first`): a stage's first batch starts with a fresh
        optimizer state (AdamW's state is per parameter and made on its first step)."""
        self.stage = epoch // self.epochs
        if first == 0 and epoch % self.epochs == 0:
            optimizer.state.clear()

    def classes(self) -> torch.Tensor:
        return torch.cat([t.classes for t in self.stages[self.stage]])

    def ends_stage(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs == 0


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


def run_settings(config: DistillConfig, mode: str, space: LabelSpace, tasks: list[Task],
                 processes: int) -> dict:
    """Everything that decides a continual run's schedule, weights and accuracy matrix: a
    checkpoint made with other settings cannot be resumed by this run."""
    train_cfg = config.train or TrainConfig()
    return {"mode": mode, "labels": space.labels, "processes": processes,
            "tasks": [{"name": t.name, "teacher_ids": t.teacher_ids,
                       "plan_id": t.stream.aligned.plan.plan_id} for t in tasks],
            "student": config.student.model_dump(mode="json") if config.student else None,
            "continual": (config.continual or ContinualConfig()).model_dump(mode="json", exclude={"mode"}),
            "eval": config.eval.model_dump(mode="json"),
            "train": train_cfg.model_dump(mode="json", exclude={"method", "output", "checkpoint_every"})}


def train_continual(config: DistillConfig, *, mode: str | None = None, resume: bool = False,
                    max_steps: int | None = None, progress: Progress | None = None) -> dict:
    """Learn the tasks in order (or jointly), evaluate after each stage, save student and report
    into `train.output`; returns the report. The stages run as one run of the shared loop, with
    its checkpoints (`train.output/checkpoints`), exact resume (`resume=True`) and DDP;
    `max_steps` stops early after that many steps, as an interrupted run would."""
    from accelerate.utils import set_seed

    train_cfg = config.train or TrainConfig()
    settings = config.continual or ContinualConfig()
    mode = mode or settings.mode
    if mode not in ("prompts", "finetune", "joint"):
        raise ConfigError(f"unknown continual mode '{mode}'; choose prompts, finetune or joint")
    if config.eval is None:
        raise ConfigError(f"{config.source}: continual training reports per-task accuracy; add "
                          "`eval: {path: ..., label_column: label}` with rows of the tasks' labels")
    accelerator = make_accelerator(train_cfg.mixed_precision)
    set_seed(train_cfg.seed)
    out = Path(train_cfg.output)
    folder = out / "checkpoints"
    if not resume:
        start_over(accelerator, folder, f"continual {mode}")
    space, tasks = open_tasks(config, train_cfg.batch_size, train_cfg.seed,
                              accelerator.process_index, accelerator.num_processes)
    student, tokenizer = _build(config, space, settings, mode,
                                prompt_widths(tasks[0].stream.aligned.manifests))
    texts, gold = read_labelled(config, space)
    mapped = student.mapped_teachers
    eval_rows = (texts, gold, eval_prompt_vectors(config, mapped, texts) if mapped else None)
    curriculum = Curriculum([tasks] if mode == "joint" else [[t] for t in tasks], train_cfg.epochs,
                            train_cfg.seed, train_cfg.grad_accumulation, train_cfg.warmup_ratio)
    body, new = student.parameter_groups()
    groups = [g for g in ({"params": body, "lr": train_cfg.lr},
                          {"params": new, "lr": train_cfg.head_lr or train_cfg.lr}) if g["params"]]
    model, optimizer, scheduler = prepare(accelerator, student, torch.optim.AdamW(groups, weight_decay=0.0),
                                          curriculum.schedule)

    def loss(model, batch, device) -> MethodOutput:
        inputs = tokenizer(batch.texts, padding=True, truncation=True,
                           max_length=config.student.max_length, return_tensors="pt").to(device)
        if mapped:
            inputs["teacher_prompts"] = batch.teacher_prompts.to(device)
        out = model(**inputs)
        value, metrics = cdl_loss(out.logits.float(), teacher_batch_to(batch.teachers, device),
                                  curriculum.classes().to(device), train_cfg.temperature,
                                  settings.ce_weight, batch.weights.to(device))
        return MethodOutput(value + settings.match_weight * out.match_loss,
                            {**metrics, "match": out.match_loss.item(), "stage": curriculum.stage})

    def end_epoch(epoch: int, state: dict) -> None:
        """After a stage's last epoch: the accuracy on every task seen so far (one matrix row)."""
        if curriculum.ends_stage(epoch):
            seen = len(tasks) if mode == "joint" else curriculum.stage + 1
            state.setdefault("matrix", []).append(
                _evaluate(accelerator.unwrap_model(model), tokenizer, config, eval_rows, tasks, seen))
            model.train()

    loop = Loop(accelerator, model, optimizer, scheduler, curriculum.total_epochs,
                sum(curriculum.stage_steps()), batches=curriculum.batches, loss=loss, folder=folder,
                settings=run_settings(config, mode, space, tasks, accelerator.num_processes),
                checkpoint_every=train_cfg.checkpoint_every, accumulation=train_cfg.grad_accumulation,
                epoch_batches=curriculum.epoch_batches,
                begin_epoch=lambda epoch, first: curriculum.enter(epoch, first, optimizer),
                end_epoch=end_epoch)
    cursor = loop.run(resume=resume, max_steps=max_steps, progress=progress)
    matrix, finished = cursor.state.get("matrix", []), loop.finished(cursor)
    report = {"mode": mode, "tasks": [t.name for t in tasks], "labels": space.labels,
              "task_classes": [t.classes.tolist() for t in tasks],
              "teacher_ids": {t.name: t.teacher_ids for t in tasks}, "mapped_teachers": mapped,
              "matrix": matrix, **(summarize(matrix) if finished else {}), "steps": cursor.step,
              "finished": finished, "train_seconds": cursor.train_seconds,
              "processes": accelerator.num_processes, "output": str(out),
              "config": config.model_dump(mode="json", exclude={"source"}),
              "coverage": cursor.coverage, "history": cursor.history}
    if finished and accelerator.is_main_process:
        accelerator.unwrap_model(model).save(out / "student", tokenizer)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return report
