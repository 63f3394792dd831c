"""The classification recipe: how a student learns from classification, relevance and
regression caches (and prompt-based teachers' logits), run by the shared loop of
pipeline/trainer.py: the student's label space, the ensemble method's loss per batch, the
optional feature loss (ADM), group-aware batches for the ranking losses, and the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distill.pipeline.caches import open_eval_caches
from distill.pipeline.config import ConfigError, DistillConfig, TrainConfig
from distill.pipeline.inputs import encode_padded
from distill.pipeline.kinds import make_method
from distill.pipeline.kinds.classification.evaluate import AGREEMENT_ROWS, eval_set, evaluate
from distill.pipeline.kinds.classification.features import FeatureDistiller, feature_widths
from distill.pipeline.kinds.classification.labels import LabelSpace, build_label_space
from distill.pipeline.kinds.classification.losses import GROUP_LOSSES
from distill.pipeline.kinds.classification.methods.base import TeacherBatch
from distill.pipeline.kinds.classification.stream import Batch, ClassificationStream
from distill.pipeline.methods import MethodOutput
from distill.pipeline.recipe import Recipe, student_source
from distill.pipeline.student import build_student, is_head
from distill.pipeline.teacher import fingerprint
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


def source_label_map(config: DistillConfig) -> dict[str, str]:
    """The label map of the teacher the student is cut from: its head rows carry over by name."""
    student = config.student
    if student is None or student.from_teacher is None:
        return {}
    return config.teacher(student.from_teacher).label_map or {}


def classification_recipe(config: DistillConfig, aligned: AlignedCache, method: str,
                          accelerator) -> Recipe:
    train_cfg = config.train or TrainConfig()
    if train_cfg.pack:
        raise ConfigError(f"{config.source}: train.pack packs token sequences for causal-LM "
                          "students; remove it for classification teachers")
    labels = label_space(config, aligned)
    calibration = [((t.calibration.scale, t.calibration.bias) if t.calibration else (1.0, 0.0))
                   for t in config.teachers]
    by_group = _check_loss(config, train_cfg, aligned, labels)
    stream = ClassificationStream(aligned, labels, train_cfg.batch_size, seed=train_cfg.seed,
                         buffer_shards=train_cfg.shuffle_buffer_shards,
                         rank=accelerator.process_index, world=accelerator.num_processes,
                         calibration=calibration, group_by_length=train_cfg.group_by_length,
                         features=train_cfg.features is not None, by_group=by_group)
    held_out = eval_set(config, labels, open_eval_caches(config), calibration) if config.eval else None
    ensemble = make_method("classification", method, temperature=train_cfg.temperature,
                           loss=train_cfg.loss, **train_cfg.method_options)
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
                  on_prepare=features.prepare if features else (lambda accelerator: None),
                  settings={"calibration": [t.calibration.model_dump(mode="json") if t.calibration
                                            else None for t in config.teachers]})


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
