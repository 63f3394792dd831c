"""Peak memory of caching a real 262,144-token teacher (Gemma-3-270M) at batch 8 x 512 tokens
(bench/README.md, "Causal-LM memory"): the teacher's runner (`CausalLMInference`, the path
`distill cache` takes) over 8 texts of 512 tokens (WordNet glosses joined), in a fresh process
per mode so each peak is its own.

  above weights   peak RSS during the run minus the bytes of the model's parameters, MiB (the
                  RSS right after loading is lower: safetensors pages come in as the first
                  forward touches them); target: far below the dense batch x length x
                  vocabulary float32 logits (4,096 MiB)

Run: python bench/lm_memory.py [--modes top-k sampled]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, report, save, wordnet_texts  # noqa: E402

hermetic_env()

BATCH, LENGTH = 8, 512
MODES = {"top-k": {"mode": "top-k", "k": 32}, "sampled": {"mode": "sampled", "samples": 32}}
MIB = 2 ** 20


def rss() -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS"))) * 1024


def measure(mode: str, model_dir: Path) -> dict:
    """In this process: load, run one batch of 8 x 512 tokens, report bytes."""
    import torch

    from distill.pipeline.config import teacher_config
    from distill.pipeline.kinds.causal_lm.inference import CausalLMInference

    torch.set_num_threads(2)
    config = teacher_config(name="gemma", model=str(model_dir), kind="causal-lm", max_length=LENGTH,
                           batch_size=BATCH, lm=MODES[mode])
    runner = CausalLMInference(config, model_dir)
    glosses = wordnet_texts("pool")
    texts = [" ".join(glosses[i * 60:(i + 1) * 60]) for i in range(BATCH)]   # > 512 tokens each
    weights = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    loaded = rss()
    start = time.perf_counter()
    out = runner.run(texts)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"tokens": int(out.lengths.sum()), "weights": weights, "loaded_rss": loaded,
            "peak_rss": peak, "seconds": seconds, "vocab": runner.vocab_size}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=sorted(MODES))
    parser.add_argument("--model-dir", type=Path, default=Path("build/gemma3-270m"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model_dir)))
        return
    from distill.pipeline.kinds.causal_lm.smollm2 import export_gemma3

    model_dir = export_gemma3(args.model_dir)
    results: dict = {"model": "Gemma-3-270M (Q4_K_M, dequantized)", "batch": BATCH, "length": LENGTH}
    for mode in args.modes:
        run = subprocess.run([sys.executable, __file__, "--child", mode, "--model-dir", str(model_dir)],
                             capture_output=True, text=True, check=True)
        m = json.loads(run.stdout.strip().splitlines()[-1])
        dense = m["tokens"] * m["vocab"] * 4                      # float32 logits of the batch
        print(f"{mode}: {m['tokens']} tokens in {m['seconds']:.0f} s; weights {m['weights'] / MIB:.0f} MiB, "
              f"RSS loaded {m['loaded_rss'] / MIB:.0f} MiB, peak {m['peak_rss'] / MIB:.0f} MiB")
        report(f"{mode}: peak RSS above the weights, MiB", (m["peak_rss"] - m["weights"]) / MIB,
               f"far below the dense logits, {dense / MIB:.0f} MiB", results)
        report(f"{mode}: peak RSS above the RSS once loaded, MiB", (m["peak_rss"] - m["loaded_rss"]) / MIB,
               "report", results)
        report(f"{mode}: tokens/s", m["tokens"] / m["seconds"], "report", results)
    save("lm_memory", results)


if __name__ == "__main__":
    main()
