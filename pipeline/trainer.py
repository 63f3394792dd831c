"""Train a student from teacher caches: the recipe that ties reader, method and loop together.

The loop is the shared one of pipeline/loop.py (accelerate, DDP, checkpoints, exact resume).
Teachers are never loaded: everything they contribute comes from the cache. Each method's run
has its own folder, `train.output/METHOD`, so trying another method never replaces a student.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from distill.pipeline.caches import open_caches, open_eval_caches
from distill.pipeline.config import ConfigError, DistillConfig, TrainConfig
from distill.pipeline.evaluate import AGREEMENT_ROWS, eval_set, evaluate
from distill.pipeline.features import FeatureDistiller, feature_widths
from distill.pipeline.inputs import encode_padded
from distill.pipeline.labels import LabelSpace, build_label_space
from distill.pipeline.loop import Loop, Progress, linear_warmup, make_accelerator, prepare, start_over
from distill.pipeline.losses import GROUP_LOSSES
from distill.pipeline.methods import make_method
from distill.pipeline.methods.base import MethodOutput, TeacherBatch
from distill.pipeline.reader import Batch, CacheStream, prefetch
from distill.pipeline.student import build_student, is_head
from distill.pipeline.teacher import fingerprint, resolve_model_dir
from distill.storage.aligned import AlignedCache


def teacher_batch_to(batch: TeacherBatch, device) -> TeacherBatch:
    def move(t):
        return None if t is None else t.to(device)

    return TeacherBatch(move(batch.logits), move(batch.covered), move(batch.valid),
                        move(batch.mc_probs), move(batch.mc_entropy), move(batch.groups))


@dataclass
class FeatureTerm:
    """The feature loss added to the method's: its module (projectors), student layer and weight."""

    distiller: torch.nn.Module
    layer: int
    weight: float

    def prepare(self, accelerator) -> None:
        """Prepared like the model, so checkpoints hold the projectors and DDP syncs them."""
        self.distiller = accelerator.prepare(self.distiller)


def student_batch_loss(model, tokenizer, method, batch: Batch, device, max_length: int,
                       features: FeatureTerm | None = None, truncation: str = "only_second") -> MethodOutput:
    """One batch: tokenize (pairs as pairs, like the teachers: pipeline/inputs.py), run the
    student, let the ensemble method build the loss (plus the feature loss on the student's
    hidden states when `features` is given)."""
    inputs = encode_padded(tokenizer, batch.texts, batch.pairs, max_length, truncation).to(device)
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
    by_group = _check_loss(config, train_cfg, aligned, labels)
    stream = CacheStream(aligned, labels, train_cfg.batch_size, seed=train_cfg.seed,
                         buffer_shards=train_cfg.shuffle_buffer_shards,
                         rank=accelerator.process_index, world=accelerator.num_processes,
                         calibration=calibration, group_by_length=train_cfg.group_by_length,
                         features=train_cfg.features is not None, by_group=by_group)
    held_out = eval_set(config, labels, open_eval_caches(config), calibration) if config.eval else None
    ensemble = make_method(method, temperature=train_cfg.temperature, loss=train_cfg.loss,
                           **train_cfg.method_options)
    source, layers, pick = student_source(config)
    model, tokenizer = build_student(source, labels, layers, pick, source_label_map(config))
    features = _feature_term(train_cfg, model, source, aligned)
    head = {id(p) for n, p in model.named_parameters() if is_head(n)}
    new = [p for p in model.parameters() if id(p) in head] + \
        (list(features.distiller.parameters()) if features else [])
    groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": train_cfg.lr},
              {"params": new, "lr": train_cfg.head_lr or train_cfg.lr}]
    return Recipe(stream, model, tokenizer, groups,
                  loss=lambda m, batch, device: student_batch_loss(m, tokenizer, ensemble, batch, device,
                                                             config.student.max_length, features,
                                                             config.student.truncation),
                  evaluate=lambda student: evaluate(student, tokenizer, config, stream, labels, held_out),
                  report={"labels": labels.labels, "loss": train_cfg.loss, **_groups(aligned, by_group),
                          "ensemble_agreement_on":
                          f"the training corpus {config.corpus.path} (its first {AGREEMENT_ROWS} "
                          "rows or so, the student's own training rows: not held out)"},
                  on_prepare=features.prepare if features else (lambda accelerator: None))


def _check_loss(config: DistillConfig, train_cfg: TrainConfig, aligned: AlignedCache,
                labels: LabelSpace) -> bool:
    """Whether batches hold whole query groups (the plan has groups); a group loss (listwise,
    margin_mse) without single scores or without groups is refused: it would rank nothing."""
    plan = aligned.plan
    if train_cfg.loss in GROUP_LOSSES:
        if not labels.scores:
            raise ConfigError(f"{config.source}: train.loss: {train_cfg.loss} ranks one relevance "
                              f"score per candidate, but the teachers have {labels.num_labels} "
                              "classes; use loss: pointwise")
        if plan.group_column is None:
            raise ConfigError(f"{config.source}: train.loss: {train_cfg.loss} ranks the candidates "
                              "of a query group; set corpus.group_column (and pair_column), or use "
                              "loss: pointwise")
    return plan.group_column is not None


def _groups(aligned: AlignedCache, by_group: bool) -> dict:
    """The report's count of the training corpus's query groups, and of those with one
    candidate, which the group losses skip (a counted skip, never silent)."""
    plan = aligned.plan
    if not by_group:
        return {}
    return {"groups": {"column": plan.group_column, "groups": plan.groups,
                       "single_candidate": plan.single_candidate_groups,
                       "single_candidate_note": "groups with one candidate carry no weight in "
                                                "listwise and margin_mse (nothing to rank)"}}


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
    from accelerate.utils import set_seed

    train_cfg = config.train or TrainConfig()
    method_name = method or train_cfg.method
    out = run_folder(config, method_name)
    accelerator = make_accelerator(train_cfg.mixed_precision, train_cfg.grad_accumulation)
    set_seed(train_cfg.seed)
    aligned = open_caches(config)
    folder = out / "checkpoints"
    if not resume:
        start_over(accelerator, folder, method_name)
    if any(t.kind == "causal-lm" for t in config.teachers):
        from distill.pipeline.lm_trainer import lm_recipe

        recipe = lm_recipe(config, aligned, method_name, accelerator)
    elif train_cfg.pack:
        raise ConfigError(f"{config.source}: train.pack packs token sequences for causal-LM "
                          "students; remove it for classification teachers")
    else:
        recipe = classification_recipe(config, aligned, method_name, accelerator)
    stream = recipe.stream
    optimizer = torch.optim.AdamW(recipe.param_groups, weight_decay=train_cfg.weight_decay)
    steps_per_epoch = -(-stream.batches_per_epoch() // train_cfg.grad_accumulation)
    total = steps_per_epoch * train_cfg.epochs
    model, optimizer, scheduler = prepare(accelerator, recipe.model, optimizer,
                                          linear_warmup(int(train_cfg.warmup_ratio * total), total))
    recipe.on_prepare(accelerator)

    settings = run_settings(config, method_name, aligned, accelerator.num_processes)
    cursor = Loop(accelerator, model, optimizer, scheduler, train_cfg.epochs, total,
                  batches=lambda epoch, first: prefetch(stream.epoch(epoch, first)), loss=recipe.loss,
                  folder=folder, settings=settings, checkpoint_every=train_cfg.checkpoint_every,
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
