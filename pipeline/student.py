"""Build the student: from a checkpoint, or by truncating a teacher (DistilBERT-style init);
a classifier for classification teachers, a causal LM for causal-LM teachers."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from distill.pipeline.config import ConfigError
from distill.pipeline.kinds.classification.labels import LabelSpace


def is_head(name: str) -> bool:
    """Parameters of the classification head, which a new label space re-initialises."""
    return name.startswith(("classifier", "score", "pre_classifier"))


def pick_layers(total: int, keep: int, pick: str) -> list[int]:
    """`first` N layers, or N `even`ly spaced ones (always including the last)."""
    if not 1 <= keep <= total:
        raise ConfigError(f"student.layers: must be between 1 and {total} (the teacher's layers)")
    if pick == "first":
        return list(range(keep))
    if keep <= 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _layer_list(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The encoder's block list: the ModuleList whose length is the configured layer count."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"cannot find the {n} transformer layers of {type(model).__name__} "
                      "to truncate; give student.model instead")


def truncate(model: PreTrainedModel, keep: list[int]) -> PreTrainedModel:
    layers = _layer_list(model)
    kept = torch.nn.ModuleList(layers[i] for i in keep)
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is layers:
                setattr(parent, name, kept)
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    for index, layer in enumerate(kept):  # decoders address their KV cache by layer index
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    return model


def build_student(source: Path, labels: LabelSpace, layers: int | None = None,
                  pick: str = "even", rename: dict[str, str] | None = None):
    """A classifier with the student's label space on top of `source`'s encoder.

    When `source` is itself a classifier, its head rows are carried over by label name (after
    `rename`, the teacher's label map): a student that starts from a teacher knows that
    teacher's classes from step 0, whatever their order, and only the classes it never had
    start from a fresh row.
    """
    model = AutoModelForSequenceClassification.from_pretrained(
        source, local_files_only=True, num_labels=labels.num_labels,
        id2label=dict(enumerate(labels.labels)), label2id={n: i for i, n in enumerate(labels.labels)},
        ignore_mismatched_sizes=True)
    if labels.scores:
        model.config.problem_type = "regression"
    else:
        carry_head_rows(model, source, labels.labels, rename or {})
    if layers is not None:
        model = truncate(model, pick_layers(model.config.num_hidden_layers, layers, pick))
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return model, tokenizer


def output_layer(model: PreTrainedModel) -> torch.nn.Linear:
    """The last linear layer of the classification head: one output row per label."""
    linears = [m for n, m in model.named_modules() if is_head(n) and isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no classification head to initialise")
    return linears[-1]


def carry_head_rows(model: PreTrainedModel, source: Path, labels: list[str],
                    rename: dict[str, str]) -> None:
    """Copy each output row of `source`'s classification head into the row of `model` with the
    same label. A source without a classification head (a base encoder) or without named labels
    carries none."""
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return
    source_labels = [rename.get(config.id2label[i], config.id2label[i])
                     for i in range(len(config.id2label))]
    position = {name: i for i, name in enumerate(labels)}
    pairs = [(position[name], i) for i, name in enumerate(source_labels) if name in position]
    if not pairs:
        return
    teacher = AutoModelForSequenceClassification.from_pretrained(source, local_files_only=True)
    mine, theirs = output_layer(model), output_layer(teacher)
    to_rows, from_rows = map(list, zip(*pairs))
    with torch.no_grad():
        mine.weight[to_rows] = theirs.weight[from_rows]
        if mine.bias is not None and theirs.bias is not None:
            mine.bias[to_rows] = theirs.bias[from_rows]


def build_lm_student(source: Path, layers: int | None = None, pick: str = "even"):
    """A causal LM from `source`, optionally cut to `layers` of its blocks (embeddings and output
    head kept, so it speaks the teacher's vocabulary)."""
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    if layers is not None:
        model = truncate(model, pick_layers(model.config.num_hidden_layers, layers, pick))
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
