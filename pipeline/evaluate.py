"""Evaluate a student: labelled accuracy and macro-F1 (optional eval set), and agreement with
the teachers' ensemble on cached rows (no labels needed)."""

from __future__ import annotations

import numpy as np
import torch

from distill.pipeline.config import ConfigError, DistillConfig
from distill.pipeline.corpus import open_dataset
from distill.pipeline.labels import LabelSpace

AGREEMENT_ROWS = 2048


@torch.inference_mode()
def predict(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
            per_row: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Student logits [N, C] for `texts`, batches grouped by length; `per_row` are further model
    inputs given row by row (a continual student's teacher prompt vectors)."""
    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        inputs = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt").to(device)
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


def read_labelled(config: DistillConfig, labels: LabelSpace) -> tuple[list[str], np.ndarray]:
    ev = config.eval
    texts, gold = [], []
    index = {name: i for i, name in enumerate(labels.labels)}
    for row, example in enumerate(open_dataset(ev.path)):
        if ev.text_column not in example or ev.label_column not in example:
            raise ConfigError(f"{ev.path}: needs columns '{ev.text_column}' and "
                              f"'{ev.label_column}' (set eval.text_column / eval.label_column)")
        label = example[ev.label_column]
        if labels.scores:
            gold.append(float(label))
        elif str(label) in index:
            gold.append(index[str(label)])
        elif isinstance(label, int) and 0 <= label < len(labels.labels):
            gold.append(label)
        else:
            raise ConfigError(f"{ev.path} row {row}: label {label!r} is not a student label "
                              f"({', '.join(labels.labels)})")
        texts.append(example[ev.text_column])
    return texts, np.array(gold)


def ensemble_agreement(model, tokenizer, config: DistillConfig, stream) -> float:
    """Student argmax vs the mean-of-teachers argmax on the first cached rows."""
    texts, targets = [], []
    for batch in stream.epoch(0):
        tb = batch.teachers
        if tb.logits.shape[-1] == 1:
            targets.append((tb.logits[..., 0] * tb.valid).sum(1) / tb.valid.sum(1).clamp_min(1) > 0)
        else:
            # Per class, the mean over the valid teachers that cover it (the union ensemble):
            # a plain sum would favour classes that several teachers cover.
            probs = torch.softmax(tb.logits.masked_fill(~tb.covered, -1e9), -1)
            voters = tb.covered[None] & tb.valid[..., None]
            targets.append(((probs * voters).sum(1) / voters.sum(1).clamp_min(1)).argmax(-1))
        texts += batch.texts
        if len(texts) >= AGREEMENT_ROWS:
            break
    student = predict(model, tokenizer, texts, config.student.max_length)
    target = torch.cat(targets).numpy()
    pred = student[:, 0] > 0 if student.shape[1] == 1 else student.argmax(1)
    return float((pred == target).mean())


def evaluate(model, tokenizer, config: DistillConfig, stream, labels: LabelSpace) -> dict:
    result = {"ensemble_agreement": ensemble_agreement(model, tokenizer, config, stream)}
    if config.eval:
        texts, gold = read_labelled(config, labels)
        logits = predict(model, tokenizer, texts, config.student.max_length)
        if labels.scores:
            result["accuracy"] = float(((logits[:, 0] > 0) == (gold > 0.5)).mean())
        else:
            pred = logits.argmax(1)
            result["accuracy"] = float((pred == gold).mean())
            result["macro_f1"] = macro_f1(gold, pred, labels.num_labels)
        result["eval_rows"] = len(texts)
    return result
