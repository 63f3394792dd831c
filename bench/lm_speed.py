"""Causal-LM caching and training throughput on the real SmolLM2-135M, measured side by side in
one run (interleaved turns, median of repeats; bench/README.md, "Causal-LM throughput"):

  cache / bare loop   tokens/s of the real cache path (`teacher_cache(...).compute` of one shard:
                      tokenize, batch, chunked head, top-k or draws, Arrow shard written) over a
                      bare loop of the same model over the same batches computing the same top-k
                      (or draws) from full logits; target >= 0.9
  train stream / memory
                      student training tokens/s (forward, the token-level loss, backward, AdamW
                      step) reading batches from the cache as `distill train` does (TokenStream)
                      over the same loop on the same batches already in memory; target >= 0.95
  packing             the same streaming loop with `train.pack` (blocks of the student's
                      max_length) and without: padding fraction and tokens/s of each

Both sides of each ratio run on worker threads, as Prefect runs shard tasks.

Run: python bench/lm_speed.py [--rows N] [--repeats R] [--steps S]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, in_worker_thread, interleaved, report, save, wordnet_texts  # noqa: E402

hermetic_env()

import torch  # noqa: E402

from distill.pipeline.caching import teacher_cache  # noqa: E402
from distill.pipeline.config import CorpusConfig, teacher_config  # noqa: E402
from distill.pipeline.corpus import plan_corpus  # noqa: E402
from distill.pipeline.inference import encode_longest_first  # noqa: E402
from distill.pipeline.kinds import make_method  # noqa: E402
from distill.pipeline.kinds.causal_lm.inference import load_causal_lm  # noqa: E402
from distill.pipeline.kinds.causal_lm.recipe import token_loss  # noqa: E402
from distill.pipeline.kinds.causal_lm.smollm2 import export_smollm2  # noqa: E402
from distill.pipeline.kinds.causal_lm.stream import TokenStream  # noqa: E402
from distill.pipeline.student import build_lm_student  # noqa: E402
from distill.storage.aligned import AlignedCache  # noqa: E402
from distill.storage.cache import Cache  # noqa: E402

MODES = {"top-k k=32": {"mode": "top-k", "k": 32}, "sampled N=32": {"mode": "sampled", "samples": 32}}
MAX_LENGTH, BATCH, BLOCK = 128, 8, 128


def bare_loop(model, tokenizer, texts: list[str], lm: dict) -> int:
    """The same batches as the runner, full logits, the same targets; returns tokens done."""
    encoded, _, lengths, order = encode_longest_first(tokenizer, texts, MAX_LENGTH)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH):
            picked = order[start:start + BATCH]
            batch = tokenizer.pad({"input_ids": [encoded["input_ids"][i] for i in picked]},
                                  return_tensors="pt")
            logits = model(**batch, use_cache=False).logits[batch["attention_mask"].bool()].float()
            log_z = logits.logsumexp(-1, keepdim=True)
            if lm["mode"] == "top-k":
                values, ids = logits.topk(lm["k"], -1)
                _ = values - log_z, logits.scatter_(-1, ids, float("-inf")).logsumexp(-1) - log_z[:, 0]
            else:
                torch.multinomial((logits - log_z).exp(), lm["samples"], replacement=True,
                                  generator=generator)
    return int(lengths.sum())


def train_loop(model, optimizer, method, batches) -> float:
    """Seconds for the training steps over `batches` (an iterator is read inside the timing)."""
    start = time.perf_counter()
    for batch in batches:
        loss = token_loss(model, method, batch, torch.device("cpu"), 0.0).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


def untimed(fn, *args) -> None:
    """Run on a worker thread; the caller times the whole call."""
    in_worker_thread(fn, *args)


def first(stream: TokenStream, steps: int):
    for i, batch in enumerate(stream.epoch(0)):
        if i == steps:
            return
        yield batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64, help="WordNet train glosses")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="training steps per timed run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_dir = export_smollm2(Path("build/smollm2-135m"))
    results: dict = {"rows": args.rows, "repeats": args.repeats, "model": "SmolLM2-135M-Instruct"}
    texts = wordnet_texts("pool")[:args.rows]
    with tempfile.TemporaryDirectory(prefix="distill-lm-speed-") as tmp:
        root = Path(tmp)
        cache = Cache(root / "cache")
        (root / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        plan = plan_corpus(cache, CorpusConfig(path=str(root / "corpus.jsonl"), rows_per_shard=args.rows))
        teachers = {}
        for name, lm in MODES.items():
            config = teacher_config(name=name.split()[0], model=str(model_dir), kind="causal-lm",
                                   max_length=MAX_LENGTH, batch_size=BATCH, lm=lm)
            teachers[name] = teacher_cache(cache, plan, config)
            teachers[name].start()
            in_worker_thread(teachers[name].compute, 0)             # loads the model, warms up
            teachers[name].finalize()
        model, tokenizer = load_causal_lm(model_dir, torch.device("cpu"))
        tokens = int(sum(len(r) for r in cache.read_shard(teachers["top-k k=32"].teacher_id, 0)
                         .column("input_ids").to_pylist()))
        results["cache_tokens"] = tokens
        runs = {}
        for name, teacher in teachers.items():
            runs[f"cache {name}"] = lambda t=teacher: untimed(t.compute, 0)
            runs[f"bare {name}"] = lambda lm=MODES[name]: untimed(bare_loop, model, tokenizer, texts, lm)
        times = interleaved(runs, args.repeats)
        for name in MODES:
            ours, bare = tokens / times[f"cache {name}"], tokens / times[f"bare {name}"]
            report(f"{name}: distill cache tokens/s", ours, "report", results)
            report(f"{name}: bare loop tokens/s", bare, "report", results)
            report(f"{name}: cache / bare loop", ours / bare, ">= 0.9", results)

        aligned = AlignedCache(cache, [teachers["top-k k=32"].teacher_id])
        student, _ = build_lm_student(model_dir, layers=6)
        student.train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
        method = make_method("causal-lm", "mean")
        streams = {"stream": TokenStream(aligned, BATCH, shuffle=False),
                   "packed": TokenStream(aligned, BATCH, pack=BLOCK, shuffle=False)}
        in_memory = list(first(streams["stream"], args.steps))
        packed = list(first(streams["packed"], args.steps))
        train_tokens = int(sum(b.attention_mask.sum() for b in in_memory))
        padding = {"stream": 1 - train_tokens / sum(b.attention_mask.numel() for b in in_memory),
                   "packed": 1 - train_tokens / sum(b.packed.input_ids.numel() for b in packed)}
        times = interleaved({
            "memory": lambda: in_worker_thread(train_loop, student, optimizer, method, in_memory),
            "stream": lambda: in_worker_thread(train_loop, student, optimizer, method,
                                               first(streams["stream"], args.steps)),
            "packed": lambda: in_worker_thread(train_loop, student, optimizer, method,
                                               first(streams["packed"], args.steps))}, args.repeats)
        results["train_tokens"] = train_tokens
        rate = {name: train_tokens / t for name, t in times.items()}
        report("train: streaming tokens/s", rate["stream"], "report", results)
        report("train: in-memory tokens/s", rate["memory"], "report", results)
        report("train: streaming / in memory", rate["stream"] / rate["memory"], ">= 0.95", results)
        report("pack: padding fraction unpacked", padding["stream"], "report", results)
        report(f"pack: padding fraction packed (blocks of {BLOCK})", padding["packed"], "report", results)
        report("pack: packed tokens/s", rate["packed"], "report", results)
        report("pack: packed / unpacked tokens/s", rate["packed"] / rate["stream"], "report; > 1 is faster",
               results)
    save("lm_speed", results)


if __name__ == "__main__":
    main()
