"""The demo's data and teachers: the WordNet-12 sample kept in the repo and three MiniLM-L6
teachers fine-tuned from it once (users bring their own teachers; the demo must make some).

Each teacher sees a different two-thirds of the labelled documents of every class and its own
seed, so the three disagree the way independently trained teachers do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from distill.pipeline.finetune import finetune_classifier, minilm_path
from distill.pipeline.teacher import fingerprint

DATA = Path(__file__).parent / "demo_data" / "wordnet12"
TEACHERS = ("a", "b", "c")
# Measured on this sample (2 CPU cores): ~45 s per teacher, 0.86-0.89 test accuracy. A new
# head needs a higher learning rate than the pretrained body; embeddings stay frozen.
EPOCHS, LR, HEAD_LR, TRAIN_LAYERS, MAX_LENGTH, BATCH = 2, 2e-4, 2e-3, 6, 64, 32
# One epoch at 2e-4 keeps the demo under 10 minutes on 2 cores: 0.872 test accuracy (mean), vs
# 0.877 for 2 epochs at 1e-4 (bench/quality.py's setting) in twice the time.
STUDENT_EPOCHS, STUDENT_LR, STUDENT_HEAD_LR = 1, 2e-4, 1e-3
STAMP = "demo-teacher.json"


def labels() -> list[str]:
    return json.loads((DATA / "labels.json").read_text())


def read_split(split: str) -> list[dict]:
    """`teacher_train`, `pool` (the unlabelled corpus; labels only for evaluation) or `test`."""
    with open(DATA / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def teacher_slice(k: int, n_teachers: int = len(TEACHERS)) -> list[dict]:
    """Teacher k's training documents: per class, all but every n-th document from offset k."""
    seen: dict[str, int] = {}
    out = []
    for doc in read_split("teacher_train"):
        i = seen[doc["label"]] = seen.get(doc["label"], -1) + 1
        if i % n_teachers != k:
            out.append(doc)
    return out


def teacher_settings(k: int) -> dict:
    """Everything that shapes demo teacher k: a folder fine-tuned otherwise is not reused."""
    data = hashlib.sha256((DATA / "teacher_train.jsonl").read_bytes()).hexdigest()
    return {"slice": k, "of": len(TEACHERS), "seed": k, "epochs": EPOCHS, "lr": LR,
            "head_lr": HEAD_LR, "train_layers": TRAIN_LAYERS, "max_length": MAX_LENGTH,
            "batch_size": BATCH, "teacher_train_sha256": data}


def ensure_teachers(folder: Path, progress: Callable[[str, int, int], None] | None = None,
                    base: Path | None = None) -> dict[str, Path]:
    """Fine-tune the demo teachers that are not in `folder` with today's settings; reuse the others.

    Each finished teacher carries a stamp of its settings, written after the model, so a folder
    from an interrupted run or from other settings is fine-tuned again.
    """
    names = labels()
    base = base or minilm_path()
    base_print = fingerprint(base)["weights_sha256"]
    paths = {}
    for k, name in enumerate(TEACHERS):
        out = folder / f"teacher-{name}"
        stamp, settings = out / STAMP, {**teacher_settings(k), "base": base_print}
        if not stamp.exists() or json.loads(stamp.read_text()) != settings:
            docs = teacher_slice(k)
            report = (lambda step, total, loss, n=name: progress(n, step, total)) if progress else None
            finetune_classifier(base, [d["text"] for d in docs],
                                [names.index(d["label"]) for d in docs], names, out, seed=k,
                                epochs=EPOCHS, lr=LR, head_lr=HEAD_LR, train_layers=TRAIN_LAYERS,
                                max_length=MAX_LENGTH, batch_size=BATCH, progress=report)
            stamp.write_text(json.dumps(settings, indent=2) + "\n")
        paths[name] = out
    return paths
