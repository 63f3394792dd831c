"""Causal-LM cache size and fidelity on a real teacher (bench/README.md, "Causal-LM cache size and
fidelity"), over held-out real text (WordNet test glosses): SmolLM2-135M (vocabulary 49,152,
uint16 ids) or Gemma-3-270M (`--teacher gemma3`, vocabulary 262,144, uint32 ids; slow on CPU, so
a few hundred tokens).

Caches are written by the real cache path (`teacher_cache(...).compute`) for top-k k = 16, 32, 64
and sampled N = 16, 32, next to a plain top-k baseline of the same k (int32 ids + bfloat16
log-probs per token, no tail, uncompressed Arrow). Per mode:

  bytes/token   shard bytes on disk / tokens
  kl            KL(teacher || reconstruction) per token, nats, against the teacher's full
                distribution. Top-k: listed probabilities, the tail spread evenly over the other
                ids; baseline: its listed probabilities, 1 - their sum spread evenly. A single set
                of draws leaves unseen ids at 0 (KL infinite), so sampled modes have no kl: their
                reconstruction is exact in expectation.
  grad error    mean over tokens of ||g_cache - g|| / ||g||, where g = q - p is the dense
                distillation gradient for a real student q (the teacher cut to 6 even layers) and
                g_cache what the cache lets the loss compute (top-k: bucketed KL; baseline: KL to
                the renormalised top-k; sampled: q - counts/N). For top-k this is a bias; for
                sampled it is noise whose mean is 0 (it averages out over steps).
  id bytes      bytes per stored id of the id column's values alone: as stored (uint16/uint32,
                zstd), against ceil(log2 V) bits per id packed (17 bits at 128k, 18 at 262k),
                raw and zstd-compressed; the target is stored <= 1.05 x the packed raw size.

Run: python bench/lm_cache.py [--teacher smollm2|gemma3] [--rows N] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, report, save, wordnet_texts  # noqa: E402

hermetic_env()

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from distill.pipeline.caching import release_inference, teacher_cache  # noqa: E402
from distill.pipeline.config import CorpusConfig, teacher_config  # noqa: E402
from distill.pipeline.corpus import plan_corpus  # noqa: E402
from distill.pipeline.kinds.causal_lm.inference import load_causal_lm  # noqa: E402
from distill.pipeline.kinds.causal_lm.smollm2 import EXPORTS  # noqa: E402
from distill.pipeline.kinds.causal_lm.stream import TokenStream  # noqa: E402
from distill.pipeline.student import build_lm_student  # noqa: E402
from distill.storage.aligned import AlignedCache  # noqa: E402
from distill.storage.cache import Cache  # noqa: E402
from distill.storage.shards import write_table  # noqa: E402

MODES = {"top-k k=16": {"mode": "top-k", "k": 16}, "top-k k=32": {"mode": "top-k", "k": 32},
         "top-k k=64": {"mode": "top-k", "k": 64}, "sampled N=16": {"mode": "sampled", "samples": 16},
         "sampled N=32": {"mode": "sampled", "samples": 32}}
TARGETS = {"top-k k=64": "<= 200 B/token", "sampled N=16": "<= 48 B/token",
           "sampled N=32": "<= 48 B/token"}
MAX_LENGTH = 128
TEACHERS = {"smollm2": {"model": "SmolLM2-135M-Instruct (Q4_1, dequantized)", "rows": 160, "batch": 16,
                        "dir": "smollm2-135m"},
            "gemma3": {"model": "Gemma-3-270M (Q4_K_M, dequantized)", "rows": 24, "batch": 4,
                       "dir": "gemma3-270m"}}
ID_COLUMNS = {"top-k": "topk_ids", "sampled": "draw_ids"}


def build_caches(root: Path, model_dir: Path, rows: int, batch: int):
    cache = Cache(root / "cache")
    corpus = root / "held_out.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in wordnet_texts("test")[:rows]))
    plan = plan_corpus(cache, CorpusConfig(path=str(corpus), rows_per_shard=rows))
    for name, lm in MODES.items():
        config = teacher_config(name=name.replace(" ", "_").replace("=", ""), model=str(model_dir),
                               kind="causal-lm", max_length=MAX_LENGTH, batch_size=batch, lm=lm)
        teacher = teacher_cache(cache, plan, config)
        teacher.start()
        for index in teacher.pending()[0]:
            teacher.compute(index)
        teacher.finalize()
        release_inference(teacher.teacher_id)
    names = [n.replace(" ", "_").replace("=", "") for n in MODES]
    return cache, AlignedCache(cache, names)


def id_bytes(cache: Cache, manifest, mode: str, vocab: int) -> dict[str, float]:
    """Bytes per id of one cache's id column values: as stored (zstd over the uint16/uint32
    buffer, the codec the shards use) and packed in ceil(log2 V) bits, raw and zstd."""
    column = ID_COLUMNS[mode]
    ids = np.concatenate([_leaves(cache.read_shard(manifest.teacher_id, e).column(column).combine_chunks())
                          for e in manifest.shards])
    bits = int(np.ceil(np.log2(vocab)))
    packed = np.packbits(((ids[:, None] >> np.arange(bits, dtype=ids.dtype)) & 1).astype(np.uint8),
                         axis=None, bitorder="little").tobytes()
    n = len(ids)
    return {"bits": bits, "stored_zstd": len(pa.compress(ids.tobytes(), "zstd", asbytes=True)) / n,
            "packed_raw": bits / 8, "packed_zstd": len(pa.compress(packed, "zstd", asbytes=True)) / n}


def _leaves(array) -> np.ndarray:
    while hasattr(array, "flatten"):
        array = array.flatten()
    return array.to_numpy(zero_copy_only=False)


def baseline_bytes(root: Path, k: int, logprobs: list[np.ndarray], ids: list[np.ndarray]) -> int:
    """Bytes of a plain uncompressed top-k shard: per row, per token k int32 ids and k bf16
    log-probs (bf16 has no Arrow type: its 2-byte patterns are stored as uint16)."""
    bits = [torch.from_numpy(lp).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            for lp in logprobs]
    table = pa.table({"sample_id": pa.array(np.arange(len(ids)), pa.int64()),
                      "topk_ids": pa.array([i.astype(np.int32).tolist() for i in ids],
                                           pa.list_(pa.list_(pa.int32(), k))),
                      "topk_logprobs": pa.array([b.tolist() for b in bits],
                                                pa.list_(pa.list_(pa.uint16(), k)))})
    import fsspec

    return write_table(fsspec.filesystem("file"), str(root / f"baseline-{k}.arrow"), table).bytes


def uniform_tail(listed_ids: torch.Tensor, listed_probs: torch.Tensor, tail: torch.Tensor, vocab: int):
    """Full-vocabulary reconstruction [N, V]: listed probabilities, `tail` spread evenly."""
    spread = (tail / (vocab - listed_ids.shape[1]))[:, None]
    return spread.expand(-1, vocab).clone().scatter_(1, listed_ids, listed_probs)


def kl(p_log: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    p = p_log.exp()
    return (p * (p_log - recon.clamp_min(1e-30).log())).sum(-1)


def rel_error(estimate: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    return (estimate - dense).norm(dim=-1) / dense.norm(dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", choices=sorted(TEACHERS), default="smollm2")
    parser.add_argument("--rows", type=int, default=None, help="held-out WordNet test glosses")
    parser.add_argument("--model-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    spec = TEACHERS[args.teacher]
    rows, batch_size = args.rows or spec["rows"], spec["batch"]
    model_dir = EXPORTS[args.teacher](args.model_dir or Path("build") / spec["dir"])
    results: dict = {"rows": rows, "model": spec["model"], "teacher": args.teacher}
    with tempfile.TemporaryDirectory(prefix="distill-lm-bench-") as tmp:
        root = Path(tmp)
        cache, aligned = build_caches(root, model_dir, rows, batch_size)
        teacher, _ = load_causal_lm(model_dir, torch.device("cpu"))
        student, _ = build_lm_student(model_dir, layers=6)
        student.eval()
        sums: dict[str, list] = {name: [] for name in [*MODES, *(f"baseline k={k}" for k in (16, 32, 64))]}
        grads: dict[str, list] = {name: [] for name in sums}
        base: dict[int, tuple[list, list]] = {k: ([], []) for k in (16, 32, 64)}
        tokens, vocab = 0, aligned.manifests[0].settings["vocab_size"]
        with torch.inference_mode():
            for batch in TokenStream(aligned, batch_size, shuffle=False).epoch(0):
                mask = batch.attention_mask.bool()
                p_log = torch.log_softmax(teacher(input_ids=batch.input_ids,
                                                  attention_mask=batch.attention_mask,
                                                  use_cache=False).logits[mask][:, :vocab].float(), -1)
                q = torch.softmax(student(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                          use_cache=False).logits[mask][:, :vocab].float(), -1)
                dense = q - p_log.exp()
                tokens += len(p_log)
                for name, target in zip(MODES, batch.teachers):
                    listed = target.ids.clamp_min(0)
                    if MODES[name]["mode"] == "top-k":
                        recon = uniform_tail(listed, target.probs, target.tail, vocab)
                        sums[name].append(kl(p_log, recon))
                        q_tail = (1 - q.gather(1, listed).sum(1)).clamp_min(1e-12)
                        g = q * (1 - target.tail / q_tail)[:, None]
                        g.scatter_(1, listed, q.gather(1, listed) - target.probs)
                    else:
                        freq = torch.zeros_like(q).scatter_add_(1, listed, target.probs)
                        g = q - freq
                    grads[name].append(rel_error(g, dense))
                for k in (16, 32, 64):
                    values, ids = p_log.topk(k, -1)
                    values = values.to(torch.bfloat16).float()
                    probs = values.exp()
                    recon = uniform_tail(ids, probs, (1 - probs.sum(1)).clamp_min(0), vocab)
                    sums[f"baseline k={k}"].append(kl(p_log, recon))
                    renorm = torch.zeros_like(q).scatter_(1, ids, probs / probs.sum(1, keepdim=True))
                    grads[f"baseline k={k}"].append(rel_error(q - renorm, dense))
                    lengths = batch.attention_mask.sum(1).tolist()
                    base[k][0].extend(torch.split(values, lengths))
                    base[k][1].extend(torch.split(ids, lengths))
        results["tokens"] = tokens
        print(f"held-out tokens: {tokens} ({rows} WordNet test glosses), teacher {spec['model']}")
        for name, manifest in zip(MODES, aligned.manifests):
            size = sum(s.bytes for s in manifest.shards) / tokens
            report(f"{name}: bytes/token", size, TARGETS.get(name, "report"), results)
            if MODES[name]["mode"] == "top-k":
                report(f"{name}: kl(teacher||reconstruction) nats/token", float(torch.cat(sums[name]).mean()),
                       "report; lower is better", results)
            report(f"{name}: grad error", float(torch.cat(grads[name]).mean()), "report", results)
            sizes = id_bytes(cache, manifest, MODES[name]["mode"], manifest.settings["vocab_size"])
            for kind in ("stored_zstd", "packed_raw", "packed_zstd"):
                report(f"{name}: id bytes {kind.replace('_', ' ')} ({sizes['bits']} bits packed)",
                       sizes[kind], "report", results)
            report(f"{name}: stored ids / {sizes['bits']}-bit packed ids",
                   sizes["stored_zstd"] / sizes["packed_raw"], "<= 1.05", results)
        for k in (16, 32, 64):
            name = f"baseline k={k}"
            values = [v.numpy() for v in base[k][0]]
            ids = [i.numpy() for i in base[k][1]]
            size = baseline_bytes(root, k, values, ids) / tokens
            ours = sum(s.bytes for s in aligned.manifests[[16, 32, 64].index(k)].shards) / tokens
            report(f"{name} (int32 ids + bf16, no tail): bytes/token", size, "report", results)
            report(f"{name}: kl(teacher||reconstruction) nats/token", float(torch.cat(sums[name]).mean()),
                   "report", results)
            report(f"{name}: grad error", float(torch.cat(grads[name]).mean()), "report", results)
            report(f"top-k k={k}: bytes ratio ours / baseline", ours / size, "report; < 1 is smaller",
                   results)
    save("lm_cache" if args.teacher == "smollm2" else f"lm_cache_{args.teacher}", results)


if __name__ == "__main__":
    main()
