"""Relevance ranking benchmark on the WordNet relevance set (scripts/build_wordnet_relevance.py).

Teachers: cross-encoders fine-tuned here from all-MiniLM-L6-v2 (`finetune_classifier` with
pairs), three on different slices of the teach split with different seeds, and, for the
`poor` setting, a systematically wrong one (40 % of its positives swapped for a hard negative
of the same query: a sense of the same word). All teachers are cached over the pool and the
test split with `distill cache`; students (all-MiniLM-L6-v2 cut to `--layers` layers) are
trained from the pool caches alone with each method and loss, and scored on the test split.

Prints, per setting: each teacher's, the ensemble's (mean of the teachers' scores) and every
student's NDCG@10 and MRR@10 (from the training reports), student NDCG@10 / ensemble NDCG@10
and student FLOPs / ensemble FLOPs; writes bench/results/relevance.json. Exits 0 whether or
not a target is met. Targets (see bench/README.md): best student >= 0.99 of the ensemble's
NDCG@10 at <= 2 % of its FLOPs (with the mpnet teachers, not built by this script yet); with
the poor teacher, GOVERN >= mean + 1 point of NDCG@10 and within 1 point of median.

    python bench/relevance.py [--workdir build/bench-relevance] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SIZES = {"full": {"teach": 2000, "pool": 2000, "test": 500, "epochs": 1, "train_epochs": 2},
         "quick": {"teach": 150, "pool": 150, "test": 60, "epochs": 1, "train_epochs": 1}}
MAX_LENGTH = 64
SWAPPED = 0.4          # share of the poor teacher's positives swapped for a hard negative
METHODS = ("mean", "median", "govern")
LOSSES = ("pointwise", "listwise")
STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.0f} s] {message}", flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_data(workdir: Path, size: dict) -> Path:
    out = workdir / "data"
    if not (out / "test.jsonl").exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "build_wordnet_relevance.py"),
                        "--out", str(out), "--teach", str(size["teach"]), "--pool",
                        str(size["pool"]), "--test", str(size["test"])], check=True)
    return out


def swap_positives(rows: list[dict], share: float, seed: int) -> list[dict]:
    """The poor teacher's labels: in a seeded `share` of the queries the relevant definition is
    labelled 0 and a hard negative (another sense of the same word) 1."""
    rng = random.Random(seed)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["query_id"], []).append(dict(r))
    out = []
    for group in groups.values():
        hard = [r for r in group if not r["label"] and r["passage"].split(":")[0].split(", ")[0].lower()
                == r["word"]]
        if hard and rng.random() < share:
            next(r for r in group if r["label"])["label"] = 0
            rng.choice(hard)["label"] = 1
        out += group
    return out


def ensure_teacher(workdir: Path, name: str, rows: list[dict], seed: int, epochs: int) -> Path:
    from distill.pipeline.finetune import finetune_classifier, minilm_path

    out = workdir / "teachers" / name
    if (out / "config.json").exists():
        return out
    log(f"fine-tuning teacher {name} on {len(rows)} pairs")
    finetune_classifier(minilm_path(), [r["query"] for r in rows], [r["label"] for r in rows],
                        ["relevance"], out, seed=seed, epochs=epochs, batch_size=32, lr=5e-5,
                        head_lr=1e-3, max_length=MAX_LENGTH, pairs=[r["passage"] for r in rows])
    return out


def teachers_for(workdir: Path, data: Path, size: dict) -> dict[str, Path]:
    teach = read_jsonl(data / "teach.jsonl")
    queries = sorted({r["query_id"] for r in teach})
    thirds = [set(queries[i::3]) for i in range(3)]
    made = {}
    for k, name in enumerate("abc"):
        part = [r for r in teach if r["query_id"] in thirds[k]]
        made[name] = ensure_teacher(workdir, name, part, seed=k, epochs=size["epochs"])
    poor = swap_positives([r for r in teach if r["query_id"] in thirds[2]], SWAPPED, seed=7)
    made["poor"] = ensure_teacher(workdir, "poor", poor, seed=2, epochs=size["epochs"])
    return made


def config(workdir: Path, data: Path, setting: str, teachers: dict[str, Path], layers: int,
           method: str, loss: str, epochs: int) -> Path:
    pair = {"text_column": "query", "pair_column": "passage", "group_column": "query_id"}
    raw = {"cache": str(workdir / "cache"),
           "corpus": {"path": str(data / "pool.jsonl"), **pair, "rows_per_shard": 2000},
           "teachers": [{"name": n, "model": str(p), "max_length": MAX_LENGTH, "batch_size": 64}
                        for n, p in teachers.items()],
           "student": {"from_teacher": next(iter(teachers)), "layers": layers,
                       "max_length": MAX_LENGTH},
           "train": {"method": method, "loss": loss, "temperature": 1.0, "epochs": epochs,
                     "batch_size": 32, "lr": 1e-4, "output": str(workdir / "runs" / setting / loss)},
           "eval": {"path": str(data / "test.jsonl"), **pair, "label_column": "label"}}
    path = workdir / "configs" / f"{setting}-{method}-{loss}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def flops_ratio(layers: int, teachers: int) -> float:
    from transformers import AutoConfig

    from distill.pipeline.finetune import minilm_path
    from distill.pipeline.flops import encoder_flops

    teacher = AutoConfig.from_pretrained(minilm_path(), num_labels=1)
    student = AutoConfig.from_pretrained(minilm_path(), num_labels=1)
    student.num_hidden_layers = layers
    return encoder_flops(student, MAX_LENGTH) / (teachers * encoder_flops(teacher, MAX_LENGTH))


def run_setting(workdir: Path, data: Path, setting: str, teachers: dict[str, Path], layers: int,
                epochs: int) -> dict:
    from distill.flows.caching import cache_teachers
    from distill.pipeline.config import load_config
    from distill.pipeline.trainer import train

    first = config(workdir, data, setting, teachers, layers, "mean", "pointwise", epochs)
    log(f"{setting}: caching {', '.join(teachers)} over pool and test")
    cache_teachers(str(first))
    result = {"teachers": None, "ensemble": None, "students": {}}
    for loss in LOSSES:
        for method in METHODS:
            path = config(workdir, data, setting, teachers, layers, method, loss, epochs)
            log(f"{setting}: training {method} / {loss}")
            report = train(load_config(path))
            ranking = report["eval"]["ranking"]
            result["teachers"], result["ensemble"] = ranking["teachers"], ranking["ensemble"]
            result["students"][f"{method}/{loss}"] = ranking["student"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "bench-relevance")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    parser.add_argument("--layers", type=int, default=3, help="student layers (of MiniLM's 6)")
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    data = build_data(args.workdir, size)
    made = teachers_for(args.workdir, data, size)
    settings = {"good": {n: made[n] for n in "abc"},
                "poor": {"a": made["a"], "b": made["b"], "poor": made["poor"]}}
    results = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "sizes": size,
               "layers": args.layers, "per_setting": {}}
    for setting, teachers in settings.items():
        found = run_setting(args.workdir, data, setting, teachers, args.layers, size["train_epochs"])
        ratio = flops_ratio(args.layers, len(teachers))
        ens = found["ensemble"]["ndcg@10"]
        print(f"\n{setting}: student FLOPs / ensemble FLOPs {ratio:.3f} (target <= 0.02 with mpnet "
              "teachers)")
        for name, r in {**{f"teacher {n}": r for n, r in found["teachers"].items()},
                        "ensemble": found["ensemble"],
                        **{f"student {k}": r for k, r in found["students"].items()}}.items():
            print(f"  {name:28s} NDCG@10 {r['ndcg@10']:.4f}  MRR@10 {r['mrr@10']:.4f}  "
                  f"/ ensemble {r['ndcg@10'] / ens:.3f}")
        s = {k: r["ndcg@10"] for k, r in found["students"].items()}
        if setting == "poor":
            for loss in LOSSES:
                g, m, med = s[f"govern/{loss}"], s[f"mean/{loss}"], s[f"median/{loss}"]
                print(f"  {loss}: GOVERN - mean {100 * (g - m):+.1f} points (target >= +1), "
                      f"GOVERN - median {100 * (g - med):+.1f} points (target within 1)")
        results["per_setting"][setting] = {**found, "flops_ratio": ratio}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "relevance.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {RESULTS / 'relevance.json'}")


if __name__ == "__main__":
    main()
