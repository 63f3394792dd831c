"""Hand-made caches written with storage's own writer: exact teacher outputs, no model, no torch.

`write_teacher` takes whole-corpus columns (one entry per plan row) and cuts them along the
plan's shards, as a teacher run would: 2-D arrays become fixed-size lists (rows with NaN become
null and are counted as non-finite, like `on_nonfinite: skip`), lists of 2-D arrays become
token-level lists, lists of 1-D arrays lists of scalars, 1-D arrays plain columns. A boolean
`truncated` column is counted in the shard entries, as the teacher runner does.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from distill.storage import FORMAT_VERSION
from distill.storage.cache import Cache
from distill.storage.columns import fixed_rows, ragged_rows
from distill.storage.lm_tokens import encode_logprobs
from distill.storage.plan import build_plan
from distill.storage.records import Plan, TeacherManifest


def write_plan(root, texts: list[str], rows_per_shard: int) -> tuple[Cache, Plan]:
    cache = Cache(root)
    plan = build_plan(cache, enumerate(texts), source="handmade.jsonl", text_column="text",
                      rows_per_shard=rows_per_shard)
    return cache, plan


def write_teacher(cache: Cache, plan: Plan, name: str, columns: dict, labels: list[str],
                  shards: list[int] | None = None, version: str = "",
                  kind: str = "classification") -> TeacherManifest:
    """Publish the given shards (all by default; then the manifest is finalized). Another
    `version` is another cache of the same teacher name (say, after its weights changed)."""
    teacher_id = hashlib.sha256(f"{name}|{plan.plan_id}{version}".encode()).hexdigest()[:16]
    manifest = TeacherManifest(
        teacher_id=teacher_id, name=name, plan_id=plan.plan_id, format_version=FORMAT_VERSION,
        code_version="test", fingerprint={}, arrow_schema=TeacherManifest.encode_schema(_schema(columns)),
        settings={"model": f"handmade/{name}", "kind": kind,
                  "num_labels": len(labels), "labels": labels})
    cache.start_teacher(manifest)
    for index in range(len(plan.shards)) if shards is None else shards:
        start = sum(s.rows for s in plan.shards[:index])
        rows = slice(start, start + plan.shards[index].rows)
        table = {"sample_id": cache.read_text_shard(plan, index).column("sample_id")}
        nonfinite = 0
        for key, values in columns.items():
            table[key], bad = _arrow(values[rows])
            nonfinite = max(nonfinite, bad)
        truncated = int(columns["truncated"][rows].sum()) if "truncated" in columns else 0
        cache.write_shard(teacher_id, index, pa.table(table), nonfinite=nonfinite,
                          truncated=truncated)
    return cache.finalize(teacher_id, plan) if shards is None else manifest


def _arrow(values) -> tuple[pa.Array, int]:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        valid = np.isfinite(values).all(axis=1)
        return fixed_rows(values, valid), int((~valid).sum())
    if isinstance(values, np.ndarray):
        return pa.array(values), 0
    if values[0].ndim == 2:
        return ragged_rows(list(values)), 0
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(values))), 0


def _schema(columns: dict) -> pa.Schema:
    return pa.schema([("sample_id", pa.int64())] + [(k, _arrow(v[:1])[0].type) for k, v in columns.items()])


# ---- the inspection scenario shared by the inspect, base-install and browser tests -------

TEXTS = ["the cat runs", "a dog eats", "red fish sleeps", "big tree", "small bird sings",
         "blue moon rises"]
CLASSES = ["x", "y", "z"]
A_PREDS = [0, 1, 2, 0, 1, 2]
B_PREDS = [0, 1, 2, 1, None, 0]           # row 4 failed (NaN logits, stored as null)
C_PROBS = np.array([[.5, .25, .25], [.25, .5, .25], [.5, .25, .25], [1 / 3] * 3,
                    [.25, .5, .25], [.25, .5, .25]])
LABELS = [{"text": TEXTS[0], "label": "x"}, {"text": TEXTS[1], "label": "y"},
          {"text": TEXTS[2], "label": "x"}, {"text": TEXTS[3], "label": 0},
          {"text": TEXTS[4], "label": "w"}, {"text": "a text no teacher saw", "label": "x"}]
LM_LOGPROBS = [np.log([[.5, .25], [.9, .1]])] + [np.log([[.6, .3]])] * 5
LM_TAIL = [np.array([np.log(.25), -np.inf])] + [np.log([.1])] * 5   # -inf: no tail mass


def _confident(preds: list[int | None]) -> np.ndarray:
    logits = np.full((len(preds), len(CLASSES)), np.nan)
    for row, pred in enumerate(preds):
        if pred is not None:
            logits[row] = 20.0 * np.eye(len(CLASSES))[pred]
    return logits


def scenario(root) -> tuple[Cache, Plan]:
    """Teachers a (float32, text 2 truncated), b (float16, text 4 failed), c (MC dropout, fp16
    features) and a causal-LM teacher `lm` over six texts in shards of 4 and 2 rows, and a
    labelled file `labels.jsonl` next to the cache."""
    import json
    from pathlib import Path

    cache, plan = write_plan(Path(root) / "cache", TEXTS, rows_per_shard=4)
    write_teacher(cache, plan, "a", {"logits": _confident(A_PREDS).astype(np.float32),
                                     "truncated": np.arange(6) == 2}, CLASSES)
    write_teacher(cache, plan, "b", {"logits": _confident(B_PREDS).astype(np.float16)}, CLASSES)
    h = -(C_PROBS * np.log(C_PROBS)).sum(1) / np.log(3)
    write_teacher(cache, plan, "c", {"logits": np.log(C_PROBS).astype(np.float32),
                                     "mc_probs": C_PROBS.astype(np.float32),
                                     "mc_entropy": h.astype(np.float32),
                                     "mc_mutual_info": np.linspace(0, .5, 6).astype(np.float32),
                                     "features": np.ones((6, 2), np.float16)}, CLASSES)
    write_teacher(cache, plan, "lm", {
        "topk_ids": [np.tile(np.array([[3, 7]], np.int32), (len(t), 1)) for t in LM_TAIL],
        "topk_logprob_codes": [encode_logprobs(lp) for lp in LM_LOGPROBS],
        "tail_logmass": [t.astype(np.float16) for t in LM_TAIL]}, ["token"], kind="causal-lm")
    (Path(root) / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LABELS))
    return cache, plan
