"""Cache throughput and cache size on the real MiniLM-L6 teacher (bench/README.md, "Cache speed and size").

  cache throughput = `distill cache` rows/s / a bare `model(**batch)` loop over the same texts,
                     same batch size, batches padded to their longest text in corpus order
  cache size       = bytes on disk per row / (C x dtype bytes + 8)

With --backends torch,onnx (the ONNX Runtime backend, on the same texts, batch and threads):
  onnx / torch     = `distill cache` rows/s with `backend: onnx` / with `backend: torch`
  onnx / bare ORT  = our ONNX Runtime cache rows/s / a bare onnxruntime session loop over the
                     same length-bucketed batches of the same export
  fidelity         = max |logit difference| between the onnx and the torch caches
  int8             = `backend_options: {quantize: int8}`: rows/s beside the others, KL(fp32 || int8)
                     and argmax agreement over the cached rows; with --students also the test
                     accuracy of a student trained from each cache (the teacher is then
                     fine-tuned on WordNet-12 first, so its logits mean something)

Run: python bench/cache_speed.py [--rows N] [--repeats R] [--backends torch,onnx] [--students]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from distill.pipeline import demo  # noqa: E402
from distill.pipeline.finetune import finetune_classifier, minilm_path  # noqa: E402
from distill.pipeline.inference import encode_longest_first  # noqa: E402

NUM_LABELS, BATCH, MAX_LENGTH = 12, 32, 128


def make_teacher(folder: Path) -> Path:
    """The real MiniLM-L6 with a 12-way head (weights of the head do not change the speed)."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=NUM_LABELS)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


def finetuned_teacher(folder: Path) -> Path:
    """The demo's first WordNet-12 teacher: all-MiniLM-L6-v2 fine-tuned on its slice, with the
    demo's settings (about a minute on 2 idle cores)."""
    names, docs = demo.labels(), demo.teacher_slice(0)
    finetune_classifier(minilm_path(), [d["text"] for d in docs], [names.index(d["label"]) for d in docs],
                        names, folder, seed=0, epochs=demo.EPOCHS, lr=demo.LR, head_lr=demo.HEAD_LR,
                        train_layers=demo.TRAIN_LAYERS, max_length=demo.MAX_LENGTH,
                        batch_size=demo.BATCH)
    return folder


def bare_loop(model, tokenizer, texts: list[str]) -> None:
    """What a user writes by hand: corpus order, each batch padded to its longest text."""
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            batch = tokenizer(texts[i:i + BATCH], padding=True, truncation=True,
                              max_length=MAX_LENGTH, return_tensors="pt")
            model(**batch)


def distill_cache(work: Path, teacher: Path, texts: list[str], tag: str, backend: dict | None = None):
    """A complete `cache-teacher` flow run on a fresh cache; returns (seconds, summary, cache
    folder). `backend`: extra teacher settings (`backend`, `backend_options`)."""
    from distill.flows.caching import cache_teacher

    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"{tag}-"))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 1024},
              "teachers": [{"name": "minilm", "model": str(teacher), "max_length": MAX_LENGTH,
                            "batch_size": BATCH, **(backend or {})}]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    summary = cache_teacher(str(folder / "config.yaml"), "minilm")
    seconds = time.perf_counter() - start
    return seconds, summary, folder / "cache"


def bare_ort_loop(session, tokenizer, texts: list[str]) -> None:
    """A hand-written onnxruntime loop over the batches our runner makes: tokenized once, sorted
    longest first, cut into batches of BATCH, each padded to its longest text."""
    encoded, _, _, order = encode_longest_first(tokenizer, texts, MAX_LENGTH)
    names = [i.name for i in session.get_inputs()]
    for start in range(0, len(texts), BATCH):
        rows = order[start:start + BATCH]
        batch = tokenizer.pad({k: [encoded[k][i] for i in rows] for k in encoded.keys()},
                              return_tensors="np")
        session.run(["logits"], {n: batch[n].astype(np.int64) for n in names})


def cache_logits(cache_root: Path, summary: dict) -> np.ndarray:
    """[rows, C] float64 logits of one teacher cache, in plan order."""
    from distill.storage.cache import Cache
    from distill.storage.columns import to_matrix

    cache = Cache(cache_root)
    manifest = cache.load_manifest(summary["teacher_id"])
    return np.concatenate([to_matrix(cache.read_shard(summary["teacher_id"], entry).column("logits"))
                           for entry in manifest.shards]).astype(np.float64)


def kl_rows(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) per row, in nats."""
    def log_softmax(x):
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(1)


def student_accuracy(work: Path, teacher: Path, backend: dict, tag: str) -> dict:
    """`distill cache` + `distill train` from one teacher (pool -> 3-layer student cut from the
    teacher, the demo's training budget) and the test accuracies of the student and teacher."""
    from distill.api import train
    from distill.flows.caching import cache_teachers

    folder = work / f"student-{tag}"
    folder.mkdir()
    raw = {"cache": "cache", "corpus": {"path": str(demo.DATA / "pool.jsonl"), "rows_per_shard": 1024},
           "teachers": [{"name": "t", "model": str(teacher), "max_length": demo.MAX_LENGTH,
                         "batch_size": 64, **backend}],
           "student": {"from_teacher": "t", "layers": 3, "max_length": demo.MAX_LENGTH},
           "train": {"method": "mean", "epochs": demo.STUDENT_EPOCHS, "lr": demo.STUDENT_LR,
                     "head_lr": demo.STUDENT_HEAD_LR, "output": "student"},
           "eval": {"path": str(demo.DATA / "test.jsonl"), "label_column": "label"}}
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cache_teachers(str(config))
    report = train(str(config))
    return {"student": report["eval"]["accuracy"],
            "teacher": next(iter(report["eval"]["teachers"].values()))["accuracy"]}


def torch_figures(work: Path, teacher: Path, corpora: dict[str, list[str]], args, results: dict) -> None:
    """`distill cache` against a bare `model(**batch)` loop, and the cache size."""
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    for kind, texts in corpora.items():
        summaries = []

        def cached(texts=texts, kind=kind, summaries=summaries):
            seconds, summary, _ = distill_cache(work, teacher, texts, kind)
            summaries.append(summary)
            return seconds

        t = interleaved({"bare": lambda texts=texts: in_worker_thread(bare_loop, model, tokenizer, texts),
                         "distill": cached},
                        args.repeats)
        target = "target >= 1.3" if kind == "varied" else "target >= 0.95"
        report(f"cache throughput ratio, {kind}-length text ({len(texts)} rows)",
               t["bare"] / t["distill"], target, results)
        results[f"{kind}_rows_per_s"] = {"distill": len(texts) / t["distill"],
                                         "bare": len(texts) / t["bare"]}
        print(f"  distill cache {len(texts) / t['distill']:.1f} rows/s, bare loop "
              f"{len(texts) / t['bare']:.1f} rows/s (this CPU; compare ratios only)")
    summary = summaries[-1]
    raw = NUM_LABELS * 4 + 8
    report("cache size ratio, classification (bytes/row / (C x 4 + 8))",
           summary["bytes"] / summary["rows"] / raw, "target <= 1.1", results)


def onnx_figures(work: Path, teacher: Path, texts: list[str], args, results: dict) -> None:
    """The ONNX Runtime rows: side by side with the torch backend on the same texts, batch and
    threads, plus a bare session loop over the same batches of the same (reused) export."""
    import onnxruntime as ort

    exports = str(work / "exports")
    backends = {"torch": None, "onnx": {"backend": "onnx", "backend_options": {"export_dir": exports}},
                "int8": {"backend": "onnx",
                         "backend_options": {"export_dir": exports, "quantize": "int8"}}}
    runs: dict[str, list] = {name: [] for name in backends}
    for name, backend in backends.items():  # exports once (timed apart) and warms each up
        seconds, *_ = distill_cache(work, teacher, texts[:64], f"warm-{name}", backend)
        print(f"  first {name} run on 64 rows (with its export): {seconds:.1f} s", flush=True)
    export = next(p for p in Path(exports).iterdir()
                  if json.loads((p / "export.json").read_text())["quantize"] is None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(export / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(teacher)

    def cached(name):
        def run():
            seconds, summary, cache = distill_cache(work, teacher, texts, name, backends[name])
            runs[name].append((summary, cache))
            return seconds
        return run

    t = interleaved({**{name: cached(name) for name in backends},
                     "bare-ort": lambda: in_worker_thread(bare_ort_loop, session, tokenizer, texts)},
                    args.repeats)
    rows = len(texts)
    results["backends_rows_per_s"] = {name: rows / seconds for name, seconds in t.items()}
    print("  rows/s: " + ", ".join(f"{n} {rows / s:.1f}" for n, s in t.items()) + " (this CPU)")
    report(f"onnx cache rows/s / torch cache rows/s ({rows} varied-length rows)",
           t["torch"] / t["onnx"], "target >= 1.3", results)
    report("onnx cache rows/s / bare onnxruntime session loop rows/s (same batches)",
           t["bare-ort"] / t["onnx"], "target >= 0.95", results)
    logits = {name: cache_logits(cache, summary) for name, [(summary, cache), *_] in runs.items()}
    report("max |onnx logit - torch logit|", float(np.abs(logits["onnx"] - logits["torch"]).max()),
           "target <= 1e-3", results)
    report("int8 cache rows/s / fp32 onnx cache rows/s", t["onnx"] / t["int8"], "for reference", results)
    fp32, int8 = logits["onnx"], logits["int8"]
    report("int8: mean KL(fp32 onnx || int8) per row, millinats", 1000 * float(kl_rows(fp32, int8).mean()),
           "cost, for reference", results)
    report("max |int8 logit - fp32 onnx logit|", float(np.abs(int8 - fp32).max()), "for reference", results)
    report("int8: argmax agreement with fp32", float((fp32.argmax(1) == int8.argmax(1)).mean()),
           "cost, for reference", results)
    if args.students:
        accuracy = {name: student_accuracy(work, teacher, backends[name], name) for name in ("onnx", "int8")}
        results["int8_test_accuracy"] = accuracy
        for name, acc in accuracy.items():
            print(f"  {name}: teacher test accuracy {acc['teacher']:.4f}, student trained from its "
                  f"cache {acc['student']:.4f}")
        report("int8: student test accuracy - fp32-trained student's, points",
               100 * (accuracy["int8"]["student"] - accuracy["onnx"]["student"]), "cost, for reference",
               results)


def equal_length_texts(tokenizer, texts: list[str], tokens: int) -> list[str]:
    """Glosses joined and cut to exactly `tokens` word pieces each (decoded back to text)."""
    ids = tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"]
    out, step = [], tokens - 2
    for i in range(0, len(ids) - step, step):
        text = tokenizer.decode(ids[i:i + step])
        if len(tokenizer(text)["input_ids"]) == tokens:
            out.append(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="torch",
                        help="comma-separated: torch (the cache vs bare-loop and size figures), "
                             "onnx (the ONNX Runtime figures, beside a torch cache of the same texts)")
    parser.add_argument("--students", action="store_true",
                        help="with onnx: fine-tune the teacher first and train a student from the "
                             "fp32 and the int8 cache (minutes more)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    head = "fine-tuned on WordNet-12" if args.students else "random"
    results = {"rows": args.rows, "batch_size": BATCH, "threads": torch.get_num_threads(),
               "teacher": f"all-MiniLM-L6-v2 + 12-way head ({head})", "backends": args.backends}
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as d, \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        work = Path(d)
        teacher = (finetuned_teacher(work / "teacher") if args.students
                   else make_teacher(work / "teacher"))
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        pool = wordnet_texts("pool") + wordnet_texts("test") + wordnet_texts("teacher_train")
        corpora = {"varied": pool[:args.rows],
                   "equal": equal_length_texts(tokenizer, pool, 48)[:args.rows]}
        distill_cache(work, teacher, pool[:64], "warmup")  # starts Prefect's embedded server
        backends = set(args.backends.split(","))
        if "torch" in backends:
            torch_figures(work, teacher, corpora, args, results)
        if "onnx" in backends:
            onnx_figures(work, teacher, corpora["varied"], args, results)
    save("cache_speed", results)


if __name__ == "__main__":
    main()
