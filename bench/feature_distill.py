"""Feature distillation ablation (issue 7, ADM offline form) on WordNet-12 with real MiniLM teachers.

The demo's three fine-tuned MiniLM-L6 teachers cache token-level last-layer features through a
fixed seeded projection to 128 dimensions (recorded in the manifest) over the unlabelled pool.
Three students (teacher a cut to 3 layers, the demo's training settings, `mean` logit method) are
then trained from the same cache:

  logit-only          the mean-of-teachers KD loss alone
  + uniform features  plus the feature loss (1 - cos through a trainable projector), every token alike
  + consensus         plus the same loss with ADM's consensus weights (softmax(S/τ) per text, τ = 0.1)

and evaluated on the 1,200-document test set. Also printed: cache bytes per row with and without
the features column.

Run: python bench/feature_distill.py [--workdir DIR] [--teachers DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, report, save  # noqa: E402

hermetic_env()

import yaml  # noqa: E402

from distill.pipeline import demo  # noqa: E402

VARIANTS = {"logit-only": None, "+ uniform features": {"consensus": False},
            "+ consensus features": {"consensus": True}}
FEATURES = {"layer": -1, "pooling": "token", "project_to": 128, "seed": 0}


def write_config(workdir: Path, teachers: dict[str, Path], name: str, features: dict | None,
                 epochs: int) -> Path:
    train = {"method": "mean", "epochs": epochs, "batch_size": 32, "lr": demo.STUDENT_LR,
             "head_lr": demo.STUDENT_HEAD_LR, "temperature": 2.0, "output": f"students/{name}"}
    if features is not None:
        train["features"] = features
    config = {"cache": "cache", "corpus": {"path": str(demo.DATA / "pool.jsonl"), "rows_per_shard": 1024},
              "teachers": [{"name": n, "model": str(p), "max_length": demo.MAX_LENGTH, "batch_size": 64,
                            "features": FEATURES} for n, p in teachers.items()],
              "student": {"from_teacher": "a", "layers": 3, "labels": demo.labels(),
                          "max_length": demo.MAX_LENGTH},
              "train": train, "eval": {"path": str(demo.DATA / "test.jsonl"), "label_column": "label"}}
    path = workdir / f"{name.replace(' ', '').replace('+', 'plus-')}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bytes_per_row(cache_root: Path, summaries: list[dict]) -> tuple[float, float]:
    """(all columns, without `features`) bytes per row, from the Arrow shards on disk."""
    from distill.storage.cache import Cache

    cache = Cache(cache_root)
    total = without = rows = 0
    for s in summaries:
        for entry in cache.load_manifest(s["teacher_id"]).shards:
            table = cache.read_shard(s["teacher_id"], entry)
            total += entry.bytes
            without += entry.bytes - table.column("features").nbytes
            rows += table.num_rows
    return total / rows, without / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keeps teachers and caches (default: a temp dir)")
    parser.add_argument("--teachers", type=Path, help="a folder of demo teachers to reuse")
    parser.add_argument("--epochs", type=int, default=demo.STUDENT_EPOCHS)
    args = parser.parse_args()
    from distill.flows.caching import cache_teachers
    from distill.pipeline.config import load_config
    from distill.pipeline.trainer import train

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="distill-features-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teachers = demo.ensure_teachers(args.teachers or workdir / "teachers")
    print(f"[{time.perf_counter() - started:5.0f} s] teachers ready", flush=True)
    first = write_config(workdir, teachers, "logit-only", None, args.epochs)
    summaries = cache_teachers(str(first))
    total, without = bytes_per_row(workdir / "cache", summaries)
    print(f"[{time.perf_counter() - started:5.0f} s] cached token features of {len(summaries)} teachers",
          flush=True)
    results = {"features": FEATURES, "epochs": args.epochs, "students": {}}
    report("cache bytes per row with token features (128-d fp16, ~24 tokens)", total,
           f"{without:.1f} without the features column", results)
    for name, features in VARIANTS.items():
        config = load_config(write_config(workdir, teachers, name, features, args.epochs))
        out = train(config)
        results["students"][name] = {"eval": out["eval"], "train_seconds": out["train_seconds"]}
        print(f"[{time.perf_counter() - started:5.0f} s] {name}: test accuracy "
              f"{out['eval']['accuracy']:.4f} (train {out['train_seconds']:.0f} s)", flush=True)
    base = results["students"]["logit-only"]["eval"]["accuracy"]
    for name in list(VARIANTS)[1:]:
        diff = results["students"][name]["eval"]["accuracy"] - base
        report(f"{name} - logit-only (accuracy points)", diff * 100, "ablation; no target", results)
    save("feature_distill", results)


if __name__ == "__main__":
    main()
