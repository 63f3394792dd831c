"""Train a student from teacher caches: the recipe that ties reader, method and loop together.

The loop runs on accelerate (one process, DDP over processes/GPUs/nodes, mixed precision where
the device has it). Teachers are never loaded: everything they contribute comes from the cache.
A checkpoint holds the model, optimizer, scheduler and RNG states (accelerate's `save_state`)
plus our cursor (epoch, batch, step), so a resumed run ends with the same weights
(pipeline/checkpoints.py). Each method's run has its own folder, `train.output/METHOD`, so
trying another method never replaces a student.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from transformers import get_linear_schedule_with_warmup

from distill.pipeline import checkpoints
from distill.pipeline.caches import open_caches, open_eval_caches
from distill.pipeline.config import ConfigError, DistillConfig, TrainConfig
from distill.pipeline.evaluate import AGREEMENT_ROWS, eval_set, evaluate
from distill.pipeline.features import FeatureDistiller, feature_widths
from distill.pipeline.labels import LabelSpace, build_label_space
from distill.pipeline.methods import make_method
from distill.pipeline.methods.base import MethodOutput, TeacherBatch
from distill.pipeline.reader import Batch, CacheStream, prefetch
from distill.pipeline.student import build_student, is_head
from distill.pipeline.teacher import fingerprint, resolve_model_dir
from distill.storage.aligned import AlignedCache

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Callbacks the caller may set: start(total_steps), step(step, metrics)."""

    start: Callable[[int], None] = lambda total: None
    step: Callable[[int, dict], None] = lambda step, metrics: None


@dataclass
class Cursor:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    seen_rows: int = 0          # this epoch, this rank: rows with weight 1
    seen_id_sum: int = 0        # their sample ids summed mod 2**64: an audit of "each row once"
    coverage: list = field(default_factory=list)
    train_seconds: float = 0.0  # all legs of the run before this one (resumes add up)

    def see(self, batch) -> None:
        real = batch.sample_ids[batch.weights.numpy() > 0].astype("uint64")
        self.seen_rows += len(real)
        self.seen_id_sum = (self.seen_id_sum + int(real.sum(dtype="uint64"))) % 2**64

    def close_epoch(self, accelerator) -> None:
        from accelerate.utils import gather_object

        ranks = gather_object([(self.seen_rows, self.seen_id_sum)])
        self.coverage.append({"epoch": self.epoch, "rows": sum(r for r, _ in ranks),
                              "id_sum": sum(s for _, s in ranks) % 2**64,
                              "rows_per_rank": [r for r, _ in ranks]})
        self.seen_rows = self.seen_id_sum = 0


def teacher_batch_to(batch: TeacherBatch, device) -> TeacherBatch:
    def move(t):
        return None if t is None else t.to(device)

    return TeacherBatch(move(batch.logits), move(batch.covered), move(batch.valid),
                        move(batch.mc_probs), move(batch.mc_entropy))


@dataclass
class FeatureTerm:
    """The feature loss added to the method's: its module (projectors), student layer and weight."""

    distiller: torch.nn.Module
    layer: int
    weight: float

    def prepare(self, accelerator) -> None:
        """Prepared like the model, so checkpoints hold the projectors and DDP syncs them."""
        self.distiller = accelerator.prepare(self.distiller)


def distill_loss(model, tokenizer, method, batch: Batch, device, max_length: int,
                 features: FeatureTerm | None = None) -> MethodOutput:
    """One batch: tokenize, run the student, let the ensemble method build the loss (plus the
    feature loss on the student's hidden states when `features` is given)."""
    inputs = tokenizer(batch.texts, padding=True, truncation=True, max_length=max_length,
                       return_tensors="pt").to(device)
    out = model(**inputs, output_hidden_states=features is not None)
    weights = batch.weights.to(device)
    result = method(out.logits.float(), teacher_batch_to(batch.teachers, device), weights)
    if features is None:
        return result
    cached = [f.to(device) if f is not None else None for f in batch.features]
    loss, metrics = features.distiller(out.hidden_states[features.layer], inputs["attention_mask"],
                                       cached, weights)
    return MethodOutput(result.loss + features.weight * loss,
                        {**result.metrics, "features/loss": loss.item(), **metrics})


def label_space(config: DistillConfig, aligned: AlignedCache) -> LabelSpace:
    student = config.student
    labels = build_label_space(aligned.manifests, student.labels if student else None,
                               {t.name: t.label_map for t in config.teachers}, config.source)
    if student and student.num_labels and student.num_labels != labels.num_labels:
        raise ConfigError(f"{config.source}: student.num_labels is {student.num_labels} but the "
                          f"teachers' label space has {labels.num_labels} classes ({labels.labels})")
    return labels


def student_source(config: DistillConfig) -> tuple[Path, int | None, str]:
    student = config.student
    if student is None or (student.model is None) == (student.from_teacher is None):
        raise ConfigError(f"{config.source}: student needs exactly one of `model` (a checkpoint) "
                          "or `from_teacher` (+ `layers`) to start from")
    if student.model:
        model_dir = resolve_model_dir(student.model, f"{config.source}: student.model")
        return model_dir, student.layers, student.pick
    teacher = config.teacher(student.from_teacher)
    return resolve_model_dir(teacher.model, f"{config.source}: teachers[{teacher.name}].model"), \
        student.layers, student.pick


def source_label_map(config: DistillConfig) -> dict[str, str]:
    """The label map of the teacher the student is cut from: its head rows carry over by name."""
    student = config.student
    if student is None or student.from_teacher is None:
        return {}
    return config.teacher(student.from_teacher).label_map or {}


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


@dataclass
class Recipe:
    """What a kind of student brings to the shared loop: its batches, model and optimizer
    groups, the loss of one batch, its evaluation and extra report fields."""

    stream: CacheStream
    model: torch.nn.Module
    tokenizer: object
    param_groups: list[dict]
    loss: Callable                      # (model, batch, device) -> MethodOutput
    evaluate: Callable                  # (unwrapped model) -> dict
    report: dict = field(default_factory=dict)
    on_prepare: Callable = lambda accelerator: None   # prepares extra trainable modules


def classification_recipe(config: DistillConfig, aligned: AlignedCache, method: str,
                          accelerator) -> Recipe:
    train_cfg = config.train or TrainConfig()
    labels = label_space(config, aligned)
    calibration = [((t.calibration.scale, t.calibration.bias) if t.calibration else (1.0, 0.0))
                   for t in config.teachers]
    stream = CacheStream(aligned, labels, train_cfg.batch_size, seed=train_cfg.seed,
                         buffer_shards=train_cfg.shuffle_buffer_shards,
                         rank=accelerator.process_index, world=accelerator.num_processes,
                         calibration=calibration, group_by_length=train_cfg.group_by_length,
                         features=train_cfg.features is not None)
    held_out = eval_set(config, labels, open_eval_caches(config), calibration) if config.eval else None
    ensemble = make_method(method, temperature=train_cfg.temperature, **train_cfg.method_options)
    source, layers, pick = student_source(config)
    model, tokenizer = build_student(source, labels, layers, pick, source_label_map(config))
    features = _feature_term(train_cfg, model, source, aligned)
    head = {id(p) for n, p in model.named_parameters() if is_head(n)}
    new = [p for p in model.parameters() if id(p) in head] + \
        (list(features.distiller.parameters()) if features else [])
    groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": train_cfg.lr},
              {"params": new, "lr": train_cfg.head_lr or train_cfg.lr}]
    return Recipe(stream, model, tokenizer, groups,
                  loss=lambda m, batch, device: distill_loss(m, tokenizer, ensemble, batch, device,
                                                             config.student.max_length, features),
                  evaluate=lambda student: evaluate(student, tokenizer, config, stream, labels, held_out),
                  report={"labels": labels.labels, "ensemble_agreement_on":
                          f"the training corpus {config.corpus.path} (its first {AGREEMENT_ROWS} "
                          "rows or so, the student's own training rows: not held out)"},
                  on_prepare=features.prepare if features else (lambda accelerator: None))


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
            "calibration": [t.calibration.model_dump(mode="json") if t.calibration else None
                            for t in config.teachers],
            "train": train_cfg.model_dump(mode="json", exclude={"method", "output", "checkpoint_every"})}


def train(config: DistillConfig, *, method: str | None = None, resume: bool = False,
          max_steps: int | None = None, progress: Progress | None = None) -> dict:
    """Train, checkpoint, evaluate and save the student into `run_folder`; returns the report.

    `max_steps` stops early after that many optimizer steps (with a checkpoint), as an
    interrupted run would; `resume=True` continues from the latest checkpoint made with the
    same settings. Causal-LM teachers get the token-level recipe of `pipeline.lm_trainer`, the
    rest the classifier one.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    train_cfg = config.train or TrainConfig()
    method_name = method or train_cfg.method
    progress = progress or Progress()
    out = run_folder(config, method_name)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=_mixed_precision(train_cfg.mixed_precision),
                              gradient_accumulation_steps=train_cfg.grad_accumulation)
    set_seed(train_cfg.seed)
    aligned = open_caches(config)
    folder = out / "checkpoints"
    if not resume:
        _start_over(accelerator, folder, method_name)
    if any(t.kind == "causal-lm" for t in config.teachers):
        from distill.pipeline.lm_trainer import lm_recipe

        recipe = lm_recipe(config, aligned, method_name, accelerator)
    else:
        recipe = classification_recipe(config, aligned, method_name, accelerator)
    stream = recipe.stream
    optimizer = torch.optim.AdamW(recipe.param_groups, weight_decay=train_cfg.weight_decay)
    steps_per_epoch = -(-stream.batches_per_epoch() // train_cfg.grad_accumulation)
    total = steps_per_epoch * train_cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(train_cfg.warmup_ratio * total), total)
    model, optimizer, scheduler = accelerator.prepare(recipe.model, optimizer, scheduler)
    recipe.on_prepare(accelerator)

    settings = run_settings(config, method_name, aligned, accelerator.num_processes)
    cursor = Cursor(**checkpoints.load(accelerator, folder, settings)) if resume else Cursor()
    started = time.perf_counter()

    def save_checkpoint() -> None:
        elapsed = cursor.train_seconds + time.perf_counter() - started
        checkpoints.save(accelerator, folder, {**cursor.__dict__, "train_seconds": elapsed},
                         settings, finished=cursor.epoch >= train_cfg.epochs)

    progress.start(total)
    model.train()
    done = False
    for epoch in range(cursor.epoch, train_cfg.epochs):
        batches = prefetch(stream.epoch(epoch, cursor.batch if epoch == cursor.epoch else 0))
        for b, batch in enumerate(batches, start=cursor.batch if epoch == cursor.epoch else 0):
            with accelerator.accumulate(model):
                result = recipe.loss(model, batch, accelerator.device)
                accelerator.backward(result.loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            cursor.epoch, cursor.batch = epoch, b + 1
            cursor.see(batch)
            if accelerator.sync_gradients:
                cursor.step += 1
                metrics = {"loss": result.loss.item(), **result.metrics, "epoch": epoch,
                           "lr": scheduler.get_last_lr()[0]}
                cursor.history.append({"step": cursor.step, **metrics})
                progress.step(cursor.step, metrics)
                if train_cfg.checkpoint_every and cursor.step % train_cfg.checkpoint_every == 0:
                    save_checkpoint()
                if max_steps is not None and cursor.step >= max_steps:
                    done = True
                    break
        if done:
            break
        cursor.close_epoch(accelerator)
        cursor.epoch, cursor.batch = epoch + 1, 0
    save_checkpoint()
    finished = cursor.epoch >= train_cfg.epochs
    report = {"method": method_name, "teachers": [m.name for m in aligned.manifests],
              "teacher_ids": [m.teacher_id for m in aligned.manifests], "plan_id": aligned.plan.plan_id,
              **recipe.report, "steps": cursor.step, "finished": finished,
              "train_seconds": cursor.train_seconds + time.perf_counter() - started,
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


def _start_over(accelerator, folder: Path, method: str) -> None:
    """A new run (no --resume) replaces a finished run of the same method, with a warning, and
    removes its checkpoints so the two never mix; an unfinished one is kept: it is refused."""
    found = checkpoints.complete(folder)
    if not found:
        return
    state = checkpoints.latest_state(folder)
    if state is None or not state.get("finished"):
        raise checkpoints.ResumeError(
            f"{folder.parent} holds an unfinished {method} run (checkpoint {found[-1].name}); "
            "continue it with --resume, or give this run another --output (delete that folder "
            "to start over)")
    log.warning("replacing the finished %s run in %s (a new run was asked for, not --resume)",
                method, folder.parent)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()


def _feature_term(train_cfg: TrainConfig, model, source: Path, aligned: AlignedCache) -> FeatureTerm | None:
    """The ADM feature loss when `train.features` is set: one projector per teacher with cached
    features (they are training-only and not saved with the student)."""
    cfg = train_cfg.features
    if cfg is None:
        return None
    widths = feature_widths(aligned.manifests, fingerprint(source)["tokenizer_sha256"])
    distiller = FeatureDistiller(model.config.hidden_size, widths, consensus=cfg.consensus,
                                 tau=cfg.tau, distance=cfg.distance)
    return FeatureTerm(distiller, cfg.layer, cfg.weight)


def _save_student(model, tokenizer, out: Path, report: dict) -> None:
    from distill.pipeline.report import write_report

    model.save_pretrained(out / "student")
    tokenizer.save_pretrained(out / "student")
    write_report(out, report)
