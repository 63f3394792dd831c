"""Evaluate a student: on the labelled `eval` set, its accuracy and macro-F1 next to each
teacher's and the teachers' ensemble's (from their caches of that set: no teacher is loaded),
and with `eval.group_column` the ranking metrics of each (inspection/ranking.py); and agreement
with the ensemble on cached training rows (no labels needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from distill.inspection.ranking import CUTOFF, ranking_metrics
from distill.pipeline.config import ConfigError, DistillConfig
from distill.pipeline.corpus import open_dataset
from distill.pipeline.inputs import encode_padded
from distill.pipeline.kinds.classification.labels import LabelSpace
from distill.pipeline.kinds.classification.methods.base import TeacherBatch
from distill.pipeline.kinds.classification.stream import ClassificationStream
from distill.storage.aligned import AlignedCache
from distill.storage.ids import sample_ids
from distill.storage.plan import Pair, skip_reason
from distill.storage.records import CacheError

AGREEMENT_ROWS = 2048


@torch.inference_mode()
def predict(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
            per_row: dict[str, np.ndarray] | None = None, pairs: list[str] | None = None,
            truncation: str = "only_second") -> np.ndarray:
    """Student logits [N, C] for `texts` (with `pairs`: for the pairs), batches grouped by
    length; `per_row` are further model inputs given row by row (a continual student's teacher
    prompt vectors)."""
    device = next(model.parameters()).device
    order = np.argsort([len(t) + (len(pairs[i]) if pairs else 0) for i, t in enumerate(texts)],
                       kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        inputs = encode_padded(tokenizer, [texts[i] for i in rows],
                               [pairs[i] for i in rows] if pairs else None, max_length,
                               truncation).to(device)
        extra = {k: torch.from_numpy(v[rows]).to(device) for k, v in (per_row or {}).items()}
        out[rows] = model(**inputs, **extra).logits.float().cpu().numpy()
    return out


def macro_f1(gold: np.ndarray, pred: np.ndarray, classes: int) -> float:
    scores = []
    for c in range(classes):
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        if denom:
            scores.append(2 * tp / denom)
    return float(np.mean(scores)) if scores else 0.0


def labelled_rows(config: DistillConfig, labels: LabelSpace) -> Iterator[tuple[int, object, object, object]]:
    """(row, text, label, gold) for each row of the `eval` file; gold is the student class index
    (or the score), None when the label is not one of the student's classes. For a pair eval
    file, text is a `Pair` (text, pair, group)."""
    ev = config.eval
    index = {name: i for i, name in enumerate(labels.labels)}
    columns = [(ev.text_column, "text_column"), (ev.label_column, "label_column"),
               (ev.pair_column, "pair_column"), (ev.group_column, "group_column")]
    for row, example in enumerate(open_dataset(ev.path)):
        for column, key in columns:
            if column is not None and column not in example:
                raise ConfigError(f"{ev.path}: no column '{column}' (columns: "
                                  f"{', '.join(example)}); set eval.{key}")
        label = example[ev.label_column]
        if labels.scores:
            gold = float(label)
        elif str(label) in index:
            gold = index[str(label)]
        elif isinstance(label, int) and 0 <= label < len(labels.labels):
            gold = label
        else:
            gold = None
        text = example[ev.text_column]
        if ev.pair_column:
            group = example.get(ev.group_column) if ev.group_column else None
            if ev.group_column and (group is None or not str(group).strip()):
                raise ConfigError(f"{ev.path} row {row}: no value in the group column "
                                  f"'{ev.group_column}'; give every pair its query group")
            text = Pair(text, example[ev.pair_column], "" if group is None else str(group))
        yield row, text, label, gold


def read_labelled(config: DistillConfig, labels: LabelSpace) -> tuple[list[str], np.ndarray]:
    """Every eval row as (texts, gold); a label outside the student's classes is an error."""
    texts, gold = [], []
    for row, text, label, value in labelled_rows(config, labels):
        if value is None:
            raise ConfigError(f"{config.eval.path} row {row}: label {label!r} is not a student "
                              f"label ({', '.join(labels.labels)})")
        texts.append(text)
        gold.append(value)
    return texts, np.array(gold)


@dataclass
class EvalSet:
    """The eval rows the report scores, with the teachers' cached outputs on them in the
    student's label space (calibrated and label-mapped as training reads them), and the rows it
    cannot score, counted so that none is dropped unseen."""

    texts: list[str]
    gold: np.ndarray
    teachers: TeacherBatch
    names: list[str]                      # the teachers, in the order of `teachers`
    outside: dict[str, int]               # label -> rows whose label is not a student class
    without_text: int                     # rows the plan skips (empty or not a string)
    pairs: list[str] | None = None        # pair eval files: each text's second text
    groups: list[str] | None = None       # with eval.group_column: each row's query group


def eval_set(config: DistillConfig, labels: LabelSpace, aligned: AlignedCache,
             calibration: list[tuple[float, float]]) -> EvalSet:
    """Read the eval file and look its rows up in the teachers' caches of it (`aligned`, built
    on `eval_corpus_config`) by sample id. A usable row missing from the caches means the file
    changed after caching: refused, since its teachers' numbers would be another file's."""
    rows, gold, outside, without_text = [], [], {}, 0
    for _, text, label, value in labelled_rows(config, labels):
        if skip_reason(text) is not None:
            without_text += 1
        elif value is None:
            outside[str(label)] = outside.get(str(label), 0) + 1
        else:
            rows.append(text)
            gold.append(value)
    pairs = [r.pair for r in rows] if config.eval.pair_column else None
    groups = [r.group for r in rows] if config.eval.group_column else None
    texts = [r.text for r in rows] if pairs else rows
    if not texts:
        raise ConfigError(f"{config.eval.path}: no row has a text and a label among the student's "
                          f"classes ({', '.join(labels.labels)}); check eval.label_column")
    stream = ClassificationStream(aligned, labels, batch_size=1024, shuffle=False, calibration=calibration)
    batches = list(stream.epoch(0))
    position = {int(i): n for n, i in enumerate(np.concatenate([b.sample_ids for b in batches]))}
    wanted = sample_ids(texts, pairs)
    missing = sum(int(i) not in position for i in wanted)
    if missing:
        raise CacheError(f"{config.source}: {missing} rows of the eval file {config.eval.path} are "
                         f"not in the teachers' caches of it (the file changed after caching); run "
                         f"`distill cache {config.source}`")
    take = torch.from_numpy(np.array([position[int(i)] for i in wanted], dtype=np.int64))
    logits = torch.cat([b.teachers.logits for b in batches])[take]
    valid = torch.cat([b.teachers.valid for b in batches])[take]
    if groups is not None and not labels.scores:
        raise ConfigError(f"{config.source}: eval.group_column ranks candidates by one relevance "
                          f"score, but the teachers have {labels.num_labels} classes; use "
                          "single-score teachers (cross-encoders) or leave eval.group_column out")
    return EvalSet(texts, np.array(gold), TeacherBatch(logits, batches[0].teachers.covered, valid),
                   [m.name for m in aligned.manifests], outside, without_text, pairs, groups)


def ensemble_probs(tb: TeacherBatch) -> torch.Tensor:
    """The ensemble's probabilities [B, C]: the mean over the valid teachers of theirs; per
    class over the teachers that cover it (the union ensemble of the trainer's targets: a plain
    sum would favour classes that several teachers cover). Scores: the mean sigmoid, [B, 1]."""
    if tb.logits.shape[-1] == 1:
        probs = torch.sigmoid(tb.logits[..., 0])
        return ((probs * tb.valid).sum(1) / tb.valid.sum(1).clamp_min(1))[:, None]
    probs = torch.softmax(tb.logits.masked_fill(~tb.covered, -1e9), -1)
    voters = tb.covered[None] & tb.valid[..., None]
    return (probs * voters).sum(1) / voters.sum(1).clamp_min(1)


def decide(probs: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """Predicted class per row (for scores: 1 when p > 0.5), -1 where no teacher output is valid."""
    pred = (probs[:, 0] > 0.5).long() if probs.shape[1] == 1 else probs.argmax(1)
    return torch.where(valid, pred, -1).numpy()


def scored(gold: np.ndarray, pred: np.ndarray, labels: LabelSpace) -> dict:
    """Accuracy (scores: of the 0/1 decision against gold > 0.5) and, for classes, macro-F1."""
    if labels.scores:
        return {"accuracy": float((pred == (gold > 0.5)).mean())}
    return {"accuracy": float((pred == gold).mean()), "macro_f1": macro_f1(gold, pred, labels.num_labels)}


def teacher_scores(held_out: EvalSet, labels: LabelSpace) -> tuple[dict, dict]:
    """(per teacher, ensemble) scores on the eval rows. A teacher that covers only some classes
    (MUKA label maps) predicts among its own, so rows of the others count against it."""
    tb = held_out.teachers
    per_teacher = {}
    for k, name in enumerate(held_out.names):
        one = TeacherBatch(tb.logits[:, k:k + 1], tb.covered[k:k + 1], tb.valid[:, k:k + 1])
        pred = decide(ensemble_probs(one), one.valid[:, 0])
        per_teacher[name] = {**scored(held_out.gold, pred, labels), "classes": int(tb.covered[k].sum())}
    ensemble = scored(held_out.gold, decide(ensemble_probs(tb), tb.valid.any(1)), labels)
    return per_teacher, ensemble


def ranked(held_out: EvalSet, scores: np.ndarray) -> dict:
    """The ranking metrics of per-candidate `scores` on the eval groups."""
    return ranking_metrics(scores, held_out.gold, held_out.groups)


def teacher_rankings(held_out: EvalSet) -> tuple[dict, dict]:
    """(per teacher, ensemble) ranking metrics from the cached, calibrated scores; the
    ensemble ranks by the mean calibrated score of the valid teachers. A row where a teacher
    has no valid score ranks last for it."""
    tb = held_out.teachers
    scores = tb.logits[..., 0]
    per_teacher = {name: ranked(held_out, torch.where(tb.valid[:, k], scores[:, k], -torch.inf).numpy())
                   for k, name in enumerate(held_out.names)}
    mean = (torch.where(tb.valid, scores, 0.0).sum(1) / tb.valid.sum(1).clamp_min(1))
    return per_teacher, ranked(held_out, torch.where(tb.valid.any(1), mean, -torch.inf).numpy())


def ensemble_agreement(model, tokenizer, config: DistillConfig, stream) -> float:
    """Student argmax vs the ensemble's (`ensemble_probs`) on the first cached rows."""
    texts, pairs, targets = [], [], []
    for batch in stream.epoch(0):
        targets.append(decide(ensemble_probs(batch.teachers), batch.teachers.valid.any(1)))
        texts += batch.texts
        pairs += batch.pairs or []
        if len(texts) >= AGREEMENT_ROWS:
            break
    student = predict(model, tokenizer, texts, config.student.max_length, pairs=pairs or None,
                      truncation=config.student.truncation)
    pred = student[:, 0] > 0 if student.shape[1] == 1 else student.argmax(1)
    return float((pred == np.concatenate(targets)).mean())


def evaluate(model, tokenizer, config: DistillConfig, stream, labels: LabelSpace,
             held_out: EvalSet | None = None) -> dict:
    """The report's `eval`: ensemble agreement on training rows and, with an eval set, the
    student's scores (top level) beside each teacher's and the ensemble's."""
    result = {"ensemble_agreement": ensemble_agreement(model, tokenizer, config, stream)}
    if held_out is None:
        return result
    logits = predict(model, tokenizer, held_out.texts, config.student.max_length,
                     pairs=held_out.pairs, truncation=config.student.truncation)
    pred = (logits[:, 0] > 0).astype(int) if labels.scores else logits.argmax(1)
    student = scored(held_out.gold, pred, labels)
    teachers, ensemble = teacher_scores(held_out, labels)
    if held_out.groups is not None:
        result["ranking"] = {"student": ranked(held_out, logits[:, 0]),
                             **dict(zip(("teachers", "ensemble"), teacher_rankings(held_out)))}
        ndcg = f"ndcg@{CUTOFF}"
        ens = result["ranking"]["ensemble"][ndcg]
        result["ndcg_vs_ensemble"] = result["ranking"]["student"][ndcg] / ens if ens else None
    return {**result, **student, "eval_rows": len(held_out.texts),
            "eval_rows_outside_labels": sum(held_out.outside.values()),
            "eval_rows_without_text": held_out.without_text,
            "accuracy_vs_ensemble": student["accuracy"] / ensemble["accuracy"]
            if ensemble["accuracy"] else None,
            "outside_labels": held_out.outside, "teachers": teachers, "ensemble": ensemble}
