"""Cache throughput and cache size on the real MiniLM-L6 teacher (bench/README.md, "Cache speed and size").

  cache throughput = `distill cache` rows/s / a bare `model(**batch)` loop over the same texts,
                     same batch size, batches padded to their longest text in corpus order
  cache size       = bytes on disk per row / (C x dtype bytes + 8)

Run: python bench/cache_speed.py [--rows N] [--repeats R]
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
import yaml  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from distill.pipeline.finetune import minilm_path  # noqa: E402

NUM_LABELS, BATCH, MAX_LENGTH = 12, 32, 128


def make_teacher(folder: Path) -> Path:
    """The real MiniLM-L6 with a 12-way head (weights of the head do not change the speed)."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=NUM_LABELS)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


def bare_loop(model, tokenizer, texts: list[str]) -> None:
    """What a user writes by hand: corpus order, each batch padded to its longest text."""
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            batch = tokenizer(texts[i:i + BATCH], padding=True, truncation=True,
                              max_length=MAX_LENGTH, return_tensors="pt")
            model(**batch)


def distill_cache(work: Path, teacher: Path, texts: list[str], tag: str):
    """A complete `cache-teacher` flow run on a fresh cache; returns (seconds, summary)."""
    from distill.flows.caching import cache_teacher

    folder = Path(tempfile.mkdtemp(dir=work, prefix=f"{tag}-"))
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 1024},
              "teachers": [{"name": "minilm", "model": str(teacher), "max_length": MAX_LENGTH,
                            "batch_size": BATCH}]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    summary = cache_teacher(str(folder / "config.yaml"), "minilm")
    seconds = time.perf_counter() - start
    return seconds, summary


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
    args = parser.parse_args()
    torch.set_num_threads(2)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    results = {"rows": args.rows, "batch_size": BATCH, "teacher": "all-MiniLM-L6-v2 + 12-way head",
               "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="distill-bench-") as d, \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        work = Path(d)
        teacher = make_teacher(work / "teacher")
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
        pool = wordnet_texts("pool") + wordnet_texts("test") + wordnet_texts("teacher_train")
        corpora = {"varied": pool[:args.rows],
                   "equal": equal_length_texts(tokenizer, pool, 48)[:args.rows]}
        distill_cache(work, teacher, pool[:64], "warmup")  # starts Prefect's embedded server
        for kind, texts in corpora.items():
            summaries = []

            def cached(texts=texts, kind=kind, summaries=summaries):
                seconds, summary = distill_cache(work, teacher, texts, kind)
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
    save("cache_speed", results)


if __name__ == "__main__":
    main()
