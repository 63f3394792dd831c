"""Which causal-LM cache trains the best student (bench/README.md, "Causal-LM students").

The real SmolLM2-135M is cached by `distill cache` over WordNet pool glosses once per cache mode
(top-k k = 16, 32, 64 and sampled N = 16, 32). The same student (the teacher cut to 6 even
layers, same seed, same schedule) is then trained by `distill train` from each cache alone, for
the same steps (`method: mean`, pure distillation). Training never loads the teacher.

Each student is scored on held-out WordNet test glosses against the teacher's dense
distribution, which this bench computes there once (the only time the teacher runs outside
`distill cache`):

  dense kl      KL(teacher || student) per token over the full vocabulary, nats
  perplexity    the student's perplexity of the held-out text (next-token cross-entropy)
  bytes/token   the cache's shard bytes / the corpus tokens it covers

Target: the sampled N=32 student's dense KL within 2 % of the top-64 student's at about a
quarter of the bytes per token. Exits 0 either way; writes bench/results/lm_students.json.

Run: python bench/lm_students.py [--rows 2000] [--held-out 200] [--epochs 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, report, save, wordnet_texts  # noqa: E402

hermetic_env()

import torch  # noqa: E402

import distill  # noqa: E402
from distill.pipeline.config import DistillConfig, parse_config  # noqa: E402
from distill.pipeline.kinds.causal_lm.inference import load_causal_lm  # noqa: E402
from distill.pipeline.kinds.causal_lm.smollm2 import export_smollm2  # noqa: E402
from distill.pipeline.student import build_lm_student  # noqa: E402
from distill.storage.cache import Cache  # noqa: E402

MODES = {"topk16": {"mode": "top-k", "k": 16}, "topk32": {"mode": "top-k", "k": 32},
         "topk64": {"mode": "top-k", "k": 64}, "sampled16": {"mode": "sampled", "samples": 16},
         "sampled32": {"mode": "sampled", "samples": 32}}
LABELS = {"topk16": "top-k k=16", "topk32": "top-k k=32", "topk64": "top-k k=64",
          "sampled16": "sampled N=16", "sampled32": "sampled N=32"}
MAX_LENGTH, CACHE_BATCH, EVAL_BATCH = 64, 16, 16
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", flush=True)


def config_for(workdir: Path, model_dir: Path, name: str, args) -> DistillConfig:
    """One teacher (one cache mode) and its student; every run shares the cache root and plan."""
    raw = {"cache": str(workdir / "cache"),
           "corpus": {"path": str(workdir / "corpus.jsonl"), "rows_per_shard": 500},
           "teachers": [{"name": name, "model": str(model_dir), "kind": "causal-lm",
                         "max_length": MAX_LENGTH, "batch_size": CACHE_BATCH, "lm": MODES[name]}],
           "student": {"from_teacher": name, "layers": 6, "pick": "even"},
           "train": {"method": "mean", "epochs": args.epochs, "batch_size": args.batch, "lr": args.lr,
                     "warmup_ratio": 0.05, "seed": args.seed, "output": str(workdir / "runs" / name)},
           "eval": {"path": str(workdir / "held_out.jsonl")}}
    return parse_config(raw, source=f"lm_students[{name}]", base=workdir)


class HeldOut:
    """The held-out texts tokenized once, in fixed batches, with the teacher's dense log-probs."""

    def __init__(self, model_dir: Path, texts: list[str]):
        teacher, self.tokenizer = load_causal_lm(model_dir, torch.device("cpu"))
        self.vocab = len(self.tokenizer)
        self.batches = [self.tokenizer(texts[i:i + EVAL_BATCH], truncation=True, max_length=MAX_LENGTH,
                                       padding=True, return_tensors="pt")
                        for i in range(0, len(texts), EVAL_BATCH)]
        with torch.inference_mode():
            self.teacher = [self._log_probs(teacher, b) for b in self.batches]
        self.tokens = sum(len(t) for t in self.teacher)
        self.teacher_perplexity = self.perplexity(teacher)
        del teacher

    def _log_probs(self, model, batch) -> torch.Tensor:
        logits = model(**batch, use_cache=False).logits[batch["attention_mask"].bool()]
        return torch.log_softmax(logits[:, :self.vocab].float(), -1)

    def dense_kl(self, student) -> float:
        total = 0.0
        with torch.inference_mode():
            for batch, p_log in zip(self.batches, self.teacher):
                q_log = self._log_probs(student, batch)
                total += float((p_log.exp() * (p_log - q_log)).sum())
        return total / self.tokens

    def perplexity(self, model) -> float:
        nll, count = 0.0, 0
        with torch.inference_mode():
            for batch in self.batches:
                logits = model(**batch, use_cache=False).logits[:, :-1, :self.vocab].float()
                target, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()
                losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
                nll, count = nll + float(losses[mask].sum()), count + int(mask.sum())
        return math.exp(nll / count)


def corpus_tokens(cache: Cache, teacher_id: str, shards) -> int:
    return sum(sum(len(r) for r in cache.read_shard(teacher_id, s).column("input_ids").to_pylist())
               for s in shards)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000, help="WordNet pool glosses to cache and train on")
    parser.add_argument("--held-out", type=int, default=200, help="WordNet test glosses to score on")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("build/bench-lm-students"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_dir = export_smollm2(Path("build/smollm2-135m")).resolve()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    texts, held = wordnet_texts("pool")[:args.rows], wordnet_texts("test")[:args.held_out]
    (workdir / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (workdir / "held_out.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in held))
    results: dict = {"rows": len(texts), "held_out": len(held), "epochs": args.epochs, "batch": args.batch,
                     "lr": args.lr, "seed": args.seed, "model": "SmolLM2-135M-Instruct", "students": {}}

    log("teacher's dense distribution on the held-out text")
    scorer = HeldOut(model_dir, held)
    results["held_out_tokens"] = scorer.tokens
    report("teacher perplexity (held out)", scorer.teacher_perplexity, "report", results)
    student, _ = build_lm_student(model_dir, layers=6)
    report("untrained student: dense kl", scorer.dense_kl(student.eval()), "report", results)

    cache = Cache(workdir / "cache")
    for name in MODES:
        config = config_for(workdir, model_dir, name, args)
        log(f"{LABELS[name]}: distill cache")
        summary = distill.cache(config)[0]
        manifest = next(m for m in cache.manifests() if m.teacher_id == summary["teacher_id"])
        tokens = corpus_tokens(cache, manifest.teacher_id, manifest.shards)
        log(f"{LABELS[name]}: distill train")
        run = distill.train(config)
        trained = load_causal_lm(Path(run["student"]), torch.device("cpu"))[0].eval()
        row = {"bytes_per_token": sum(s.bytes for s in manifest.shards) / tokens, "steps": run["steps"],
               "train_seconds": run["train_seconds"], "dense_kl": scorer.dense_kl(trained),
               "perplexity": scorer.perplexity(trained)}
        results["students"][name] = row
        for key in ("bytes_per_token", "dense_kl", "perplexity"):
            report(f"{LABELS[name]}: {key.replace('_', ' ')}", row[key], "report", results)

    rows = results["students"]
    print(f"\nheld-out tokens {scorer.tokens}; teacher perplexity {scorer.teacher_perplexity:.1f}; "
          f"{rows['topk64']['steps']} steps each")
    print("| cache | bytes/token | dense KL (nats/token) | perplexity |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {LABELS[name]} | {row['bytes_per_token']:.1f} | {row['dense_kl']:.3f} "
              f"| {row['perplexity']:.1f} |")
    report("sampled N=32 / top-k k=64: dense kl", rows["sampled32"]["dense_kl"] / rows["topk64"]["dense_kl"],
           "<= 1.02", results)
    report("sampled N=32 / top-k k=64: bytes/token",
           rows["sampled32"]["bytes_per_token"] / rows["topk64"]["bytes_per_token"], "about 0.25", results)
    save("lm_students", results)


if __name__ == "__main__":
    main()
