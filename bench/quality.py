"""Quality of label-free distillation on WordNet-12 (bench/README.md, "Quality").

Teachers: the real all-MiniLM-L6-v2 fine-tuned with the demo's settings (pipeline/demo.py), each on
its own slice (`teacher_slice(k)`) and seed. Every teacher set is cached with the `cache-teachers`
flow over the unlabelled pool and over test.jsonl (the config's `eval`, same cache root), so
teacher and ensemble test accuracy come from cached logits. Students: a 3-layer truncation of the
same MiniLM, trained with `pipeline.trainer.train` from the pool cache only (labels never used),
evaluated on test.jsonl.

  (a)             3 teachers over all 12 classes: mean, median, govern, muka soft/hard, single (teacher 0)
  (a-poor)        as (a), the third teacher fine-tuned with 40 % of its labels sent to the next
                  class (c -> c+1), a systematically wrong teacher: mean, median, govern; also
                  the ensemble of the two good teachers alone
  (b-overlapping) teachers on classes {0-5}, {3-8}, {6-11, 0, 1}: mean (vanilla KD), muka soft/hard
  (b-disjoint)    teachers on classes {0-3}, {4-7}, {8-11}: same methods
  FLOPs           student forward FLOPs / ensemble forward FLOPs at the same sequence length

Students train 2 epochs at lr 1e-4 in (a), 8 epochs at 2e-4 in (b) (AMALGAMATION_TRAIN).

Run: nice -n 19 python bench/quality.py [--quick] [--workdir DIR]
--workdir keeps fine-tuned teachers, caches and finished students, so a rerun skips finished work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import RESULTS, hermetic_env, save  # noqa: E402

hermetic_env()

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from distill.pipeline import demo  # noqa: E402
from distill.pipeline.finetune import finetune_classifier, minilm_path  # noqa: E402

START = time.perf_counter()
NAMES = demo.labels()                      # the 12 classes, labels.json order
ALL = list(range(len(NAMES)))

# Teachers: name -> (classes, slice k, seed, label noise). Names are unique across settings so
# one pool cache and one test cache hold every teacher. The poor teacher's noise is the fraction
# of its training labels sent to the next class (finetune.send_to_next_class); it is fine-tuned
# like the others (same epochs), so it differs from a2 in its labels only.
TEACHERS = {
    "a0": (ALL, 0, 0, 0.0), "a1": (ALL, 1, 1, 0.0), "a2": (ALL, 2, 2, 0.0),
    "a2-poor": (ALL, 2, 2, 0.4),
    "ov0": (list(range(0, 6)), 0, 0, 0.0), "ov1": (list(range(3, 9)), 1, 1, 0.0),
    "ov2": (list(range(6, 12)) + [0, 1], 2, 2, 0.0),
    "dj0": (list(range(0, 4)), 0, 0, 0.0), "dj1": (list(range(4, 8)), 1, 1, 0.0),
    "dj2": (list(range(8, 12)), 2, 2, 0.0),
}
MUKA_SOFT = ("muka-soft", "muka", {"mode": "soft", "normalize": "batch"})
MUKA_HARD = ("muka-hard", "muka", {"mode": "hard", "normalize": "batch"})
SETTINGS = {  # name -> (teachers, MC dropout on the pool cache, methods (label, method, options))
    "a": (["a0", "a1", "a2"], False,
          [("mean", "mean", {}), ("median", "median", {}), ("govern", "govern", {}), MUKA_SOFT,
           MUKA_HARD, ("single-0", "single", {"teacher": 0})]),
    "a-poor": (["a0", "a1", "a2-poor"], False,
               [("mean", "mean", {}), ("median", "median", {}), ("govern", "govern", {})]),
    "b-overlapping": (["ov0", "ov1", "ov2"], True,
                      [("mean", "mean", {}), MUKA_SOFT, MUKA_HARD]),
    "b-disjoint": (["dj0", "dj1", "dj2"], True,
                   [("mean", "mean", {}), MUKA_SOFT, MUKA_HARD]),
}
STUDENT_LAYERS = 3
# Two epochs at 1e-4 (the demo trades 0.005 of accuracy for half the time: 1 epoch at 2e-4).
STUDENT_TRAIN = {"epochs": 2, "batch_size": 32, "lr": 1e-4, "head_lr": 1e-3,
                 "temperature": 2.0, "seed": 0}
# In (b) the student starts from a teacher that knows 4 (disjoint) or 6 (overlapping) of the 12
# classes, so it has most classes still to learn from soft targets alone: four times the steps at
# twice the rate. Measured: b-disjoint MUKA hard 0.506 after 2 epochs at 1e-4, 0.650 after 4 at
# 2e-4; b-overlapping mean 0.782 after 4 epochs at 2e-4, 0.797 after 8.
AMALGAMATION_TRAIN = {"epochs": 8, "lr": 2e-4}


def elapsed() -> str:
    return f"{time.perf_counter() - START:7.0f} s"


def log(setting: str, message: str) -> None:
    print(f"[{elapsed()}] {setting}: {message}", flush=True)


def run_settings(quick: bool) -> dict:
    """Everything that differs between --quick and the full protocol."""
    if quick:
        return {"teacher_docs_per_class": 15, "pool_per_class": 20, "test_per_class": 10,
                "teacher_epochs": 1, "mc_passes": 2, "rows_per_shard": 128,
                "train": {**STUDENT_TRAIN, "epochs": 1}, "amalgamation_train": {}}
    return {"teacher_docs_per_class": None, "pool_per_class": None, "test_per_class": None,
            "teacher_epochs": demo.EPOCHS, "mc_passes": 8, "rows_per_shard": 1024,
            "train": dict(STUDENT_TRAIN), "amalgamation_train": dict(AMALGAMATION_TRAIN)}


# ---------------------------------------------------------------------------------------------
# data

def per_class(docs: list[dict], n: int | None) -> list[dict]:
    """The first n documents of every class (all when n is None), in file order."""
    if n is None:
        return docs
    seen: dict[str, int] = {}
    out = []
    for d in docs:
        seen[d["label"]] = seen.get(d["label"], 0) + 1
        if seen[d["label"]] <= n:
            out.append(d)
    return out


def corpus_files(workdir: Path, cfg: dict) -> dict[str, Path]:
    """pool and test jsonl: the repo's files, or per-class subsets of them under --quick."""
    if cfg["pool_per_class"] is None:
        return {"pool": demo.DATA / "pool.jsonl", "test": demo.DATA / "test.jsonl"}
    folder = workdir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("pool", cfg["pool_per_class"]), ("test", cfg["test_per_class"])):
        path = folder / f"{split}.jsonl"
        text = "".join(json.dumps(d) + "\n" for d in per_class(demo.read_split(split), n))
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        out[split] = path
    return out


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------
# teachers

def ensure_teacher(workdir: Path, name: str, cfg: dict) -> Path:
    """Fine-tune teacher `name` unless its folder exists (finetune_classifier renames atomically)."""
    classes, k, seed, noise = TEACHERS[name]
    epochs = cfg["teacher_epochs"]
    out = workdir / "teachers" / name
    stamp = out / "bench-teacher.json"
    settings = {"noise": noise, "epochs": epochs}
    if noise:   # a teacher of the earlier shuffled-label protocol is never reused
        settings["noise_rule"] = "next class"
    if (out / "config.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == settings:
        log("teachers", f"{name}: reusing {out}")
        return out
    subset = sorted(classes)
    names = [NAMES[c] for c in subset]
    docs = [d for d in per_class(demo.teacher_slice(k), cfg["teacher_docs_per_class"])
            if d["label"] in names]
    started = time.perf_counter()
    total_steps = epochs * -(-len(docs) // demo.BATCH)
    log("teachers", f"{name}: fine-tuning on {len(docs)} docs of {len(names)} classes, slice {k}, "
                    f"seed {seed}, {noise:.0%} of labels sent to the next class, {total_steps} steps")

    def progress(step: int, total: int, loss: float) -> None:
        if step % 25 == 0 or step == total:
            log("teachers", f"{name}: step {step}/{total} loss {loss:.3f}")

    finetune_classifier(minilm_path(), [d["text"] for d in docs],
                        [names.index(d["label"]) for d in docs], names, out, seed=seed,
                        epochs=epochs, lr=demo.LR, head_lr=demo.HEAD_LR,
                        train_layers=demo.TRAIN_LAYERS, max_length=demo.MAX_LENGTH,
                        batch_size=demo.BATCH, label_noise=noise, progress=progress)
    stamp.write_text(json.dumps(settings) + "\n")
    log("teachers", f"{name}: done in {time.perf_counter() - started:.0f} s")
    return out


def teacher_entry(name: str, model: Path, mc_passes: int | None) -> dict:
    entry = {"name": name, "model": str(model), "max_length": demo.MAX_LENGTH, "batch_size": 64}
    if mc_passes:
        entry["mc_dropout"] = {"passes": mc_passes, "seed": 0}
        entry["name"] = f"{name}-mc{mc_passes}"     # a different teacher id: a different name
    return entry


def write_config(path: Path, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(raw, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def cache_config(workdir: Path, setting: str, files: dict[str, Path], entries: list[dict],
                 cfg: dict) -> Path:
    """One config per setting: the pool as corpus and test.jsonl as `eval`, in one cache root, so
    `distill cache` writes the teachers' caches of both (over test without MC dropout) and the
    trainer compares each student with its teachers on test from those caches."""
    raw = {"cache": str(workdir / "cache"),
           "corpus": {"path": str(files["pool"]), "text_column": "text",
                      "rows_per_shard": cfg["rows_per_shard"]},
           "teachers": entries,
           "eval": {"path": str(files["test"]), "label_column": "label"}}
    return write_config(workdir / "configs" / f"{setting}.yaml", raw)


def run_cache(config: Path, setting: str) -> tuple[list[dict], list[dict]]:
    """`distill cache CONFIG`: the cache-teachers flow (finished shards are reused); the
    summaries of the pool caches and of the test (eval) caches, each in teacher order."""
    from distill.flows.caching import cache_teachers

    started = time.perf_counter()
    log(setting, f"caching over pool and test ({config.name})")
    summaries = cache_teachers(str(config))
    computed = sum(s["computed"] for s in summaries)
    log(setting, f"cached: {sum(s['rows'] for s in summaries)} teacher-rows, "
                 f"{computed} shards computed (others reused) in {time.perf_counter() - started:.0f} s")
    pool_plan = summaries[0]["plan_id"]
    return ([s for s in summaries if s["plan_id"] == pool_plan],
            [s for s in summaries if s["plan_id"] != pool_plan])


def cached_logits(cache_root: Path, summaries: list[dict]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(corpus row of each plan row, [N, C_k] logits per teacher), read from the cache alone."""
    from distill.storage.cache import Cache

    cache = Cache(cache_root)
    plan = cache.load_plan(summaries[0]["plan_id"])
    rows = np.concatenate([cache.read_text_shard(plan, i).column("row").to_numpy()
                           for i in range(len(plan.shards))])
    from distill.storage.columns import to_matrix
    logits = [np.concatenate([to_matrix(cache.read_shard(s["teacher_id"], i).column("logits"))
                              for i in range(len(plan.shards))]).astype(np.float64)
              for s in summaries]
    return rows, logits


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def ensemble_scores(setting: str, rows: np.ndarray, logits: list[np.ndarray], gold_all: np.ndarray,
                    teacher_names: list[str]) -> dict:
    """Teacher and ensemble test accuracy from cached test logits.

    Each teacher's softmax (T=1) is scattered into the 12 classes. Ensemble: per class, the
    mean over the teachers covering it; with `weighted`, each teacher weighs by its confidence
    (max probability) on that row. In (a) every teacher covers every class, so the plain mean
    is the ensemble the targets divide by; in (b) the confidence-weighted union is. Where a
    teacher was trained on noisy labels (a-poor), `ensemble_good` is the plain mean of the
    others alone: the ensemble a user would have without the poor teacher.
    """
    gold = gold_all[rows]
    n, C = len(rows), len(NAMES)
    probs = np.zeros((len(logits), n, C))
    covered = np.zeros((len(logits), C), dtype=bool)
    out = {"teachers": {}}
    for k, (name, lg) in enumerate(zip(teacher_names, logits)):
        classes = sorted(TEACHERS[name][0])
        p = softmax(lg)
        probs[k][:, classes] = p
        covered[k, classes] = True
        pred = np.array(classes)[p.argmax(1)]
        inside = np.isin(gold, classes)
        out["teachers"][name] = {"accuracy": float((pred == gold).mean()),
                                 "in_subset_accuracy": float((pred[inside] == gold[inside]).mean()),
                                 "classes": [NAMES[c] for c in classes]}
    confidence = probs.max(2, keepdims=True)                     # [K, N, 1]
    for key, w in (("mean", np.ones_like(confidence)), ("weighted", confidence)):
        weight = w * covered[:, None, :]
        union = (weight * probs).sum(0) / np.maximum(weight.sum(0), 1e-12)
        out[f"ensemble_{key}"] = float((union.argmax(1) == gold).mean())
    out["ensemble"] = out["ensemble_weighted" if setting.startswith("b") else "ensemble_mean"]
    good = [k for k, name in enumerate(teacher_names) if not TEACHERS[name][3]]
    if len(good) < len(teacher_names):
        out["ensemble_good"] = float((probs[good].mean(0).argmax(1) == gold).mean())
        out["ensemble_good_teachers"] = [teacher_names[k] for k in good]
    out["ensemble_rule"] = ("union: per class, confidence(max prob)-weighted mean of the covering "
                            "teachers' softmax" if setting.startswith("b")
                            else "argmax of the mean of the teachers' softmax (T=1)")
    out["test_rows"] = int(n)
    return out


# ---------------------------------------------------------------------------------------------
# students

def train_student(workdir: Path, setting: str, label: str, method: str, options: dict,
                  pool_config: Path, cfg: dict, teacher_ids: list[str]) -> dict:
    """Train one student from the pool cache (reused if a finished run with the same config and
    teacher caches exists) and return its report's eval + summary."""
    from distill.pipeline.config import load_config
    from distill.pipeline.trainer import Progress, train

    base = yaml.safe_load(pool_config.read_text())
    init = cfg["student_init"]
    out = workdir / "students" / (f"{setting}-{label}" + ("" if init == "minilm" else f"-{init}"))
    budget = {**cfg["train"], **(cfg["amalgamation_train"] if setting.startswith("b") else {})}
    train_cfg = {"method": method, "method_options": options, **budget, "output": str(out)}
    # The base MiniLM, or (--student-init teacher0) the fine-tuned first teacher of the setting,
    # truncated the same way; its head is kept where its classes are the student's (setting a).
    source = ({"model": str(minilm_path())} if init == "minilm"
              else {"from_teacher": base["teachers"][0]["name"]})
    raw = {**base,
           "student": {**source, "layers": STUDENT_LAYERS, "pick": "even",
                       "labels": NAMES, "max_length": demo.MAX_LENGTH},
           "train": train_cfg}
    key = hashlib.sha256(json.dumps([raw, teacher_ids], sort_keys=True).encode()).hexdigest()
    done = out / "quality-result.json"
    if done.exists():
        previous = json.loads(done.read_text())
        if previous.get("key") == key:
            log(setting, f"student {label}: reusing finished run ({out})")
            return previous["result"]
    config = load_config(write_config(workdir / "configs" / f"{out.name}-student.yaml", raw))
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    steps: dict = {}

    def on_start(total: int) -> None:
        steps["total"] = total
        log(setting, f"student {label}: training, {total} steps")

    def on_step(step: int, metrics: dict) -> None:
        if step % 50 == 0 or step == steps["total"]:
            log(setting, f"student {label}: step {step}/{steps['total']} loss {metrics['loss']:.4f}")

    report = train(config, progress=Progress(start=on_start, step=on_step))
    seconds = time.perf_counter() - started
    history = report["history"]
    last_epoch = [h for h in history if h["epoch"] == history[-1]["epoch"]] if history else []
    diagnostics = {}
    for prefix in ("govern/agreement/", "muka/most_certain/", "muka/certainty/", "govern/median_distance"):
        keys = sorted({k for h in last_epoch for k in h if k.startswith(prefix)})
        for k in keys:
            diagnostics[k] = float(np.mean([h[k] for h in last_epoch if k in h]))
    result = {"method": method, "options": options, "eval": report.get("eval", {}),
              "steps": report["steps"], "seconds": seconds, "last_epoch_means": diagnostics}
    # optimizer state: not needed after
    shutil.rmtree(Path(report["output"]) / "checkpoints", ignore_errors=True)
    done.write_text(json.dumps({"key": key, "result": result}, indent=2) + "\n")
    acc = result["eval"].get("accuracy", float("nan"))
    log(setting, f"student {label}: test accuracy {acc:.4f} in {seconds:.0f} s")
    return result


# ---------------------------------------------------------------------------------------------
# FLOPs

def flops_ratio(teacher_classes: list[int], tokens: int) -> dict:
    """Student / ensemble forward FLOPs with `pipeline.flops.encoder_flops` (per layer and
    sequence of n tokens: 2·n·(4H² + 2HI) + 4·n²·H; plus pooler and head 2·H·(H + C))."""
    from transformers import AutoConfig

    from distill.pipeline.flops import encoder_flops

    teachers = [AutoConfig.from_pretrained(minilm_path(), num_labels=c) for c in teacher_classes]
    student = AutoConfig.from_pretrained(minilm_path(), num_labels=len(NAMES))
    student.num_hidden_layers = STUDENT_LAYERS
    ensemble_f = sum(encoder_flops(c, tokens) for c in teachers)
    student_f = encoder_flops(student, tokens)
    return {"tokens": tokens, "student_flops": student_f, "ensemble_flops": ensemble_f,
            "ratio": student_f / ensemble_f, "teachers": len(teachers),
            "teacher_layers": teachers[0].num_hidden_layers, "student_layers": STUDENT_LAYERS}


def mean_tokens(texts: list[str]) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    ids = tokenizer(texts, truncation=True, max_length=demo.MAX_LENGTH)["input_ids"]
    return float(np.mean([len(x) for x in ids]))


# ---------------------------------------------------------------------------------------------
# report

def earlier_settings(bench: str, cfg: dict, student_init: str, skip: list[str]) -> dict:
    """Settings from the last saved run with the same protocol, so running some settings again
    (`--settings b-disjoint`) keeps the others' figures in the results file; each is marked."""
    path = RESULTS / f"{bench}.json"
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("settings") != cfg or earlier.get("student_init") != student_init:
        return {}
    return {name: {**data, "from_earlier_run": True}
            for name, data in earlier.get("per_setting", {}).items() if name not in skip}


def line(name: str, text: str, value: float, target: str, results: dict, **extra) -> None:
    print(f"{name}: {text} ({target})", flush=True)
    results["figures"][name] = {"value": value, "target": target, **extra}


def points(x: float) -> str:
    return f"{x * 100:+.1f} points"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke run: few documents, 1 epoch, 2 MC passes")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keeps teachers, caches and students between runs (default: a temp dir)")
    parser.add_argument("--settings", nargs="*", choices=list(SETTINGS), default=list(SETTINGS),
                        help="run only these settings (default: all)")
    parser.add_argument("--epochs", type=int, help=f"student epochs (default {STUDENT_TRAIN['epochs']}, "
                        f"(b) {AMALGAMATION_TRAIN['epochs']}; 1 with --quick)")
    parser.add_argument("--lr", type=float, help="student encoder learning rate (default 1e-4, (b) 2e-4)")
    parser.add_argument("--head-lr", type=float, help="student head learning rate (default 1e-3)")
    parser.add_argument("--temperature", type=float, help="KD temperature (default 2)")
    parser.add_argument("--student-init", choices=["minilm", "teacher0"], default="teacher0",
                        help="truncate the setting's fine-tuned first teacher (default; measured "
                             "0.873 vs 0.816 from the base MiniLM in setting a) or the base MiniLM")
    args = parser.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()    # no per-model load reports in the output

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="distill-quality-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = run_settings(args.quick)
    for key, value in (("epochs", args.epochs), ("lr", args.lr), ("head_lr", args.head_lr),
                       ("temperature", args.temperature)):
        if value is not None:  # for every setting
            cfg["train"][key] = value
            cfg["amalgamation_train"].pop(key, None)
    cfg["student_init"] = args.student_init
    # A smoke run, students from the base MiniLM or other training settings never overwrite the
    # protocol's results.
    custom = any(v is not None for v in (args.epochs, args.lr, args.head_lr, args.temperature))
    bench_name = ("quality-quick" if args.quick else "quality") + (
        "-minilm-init" if args.student_init == "minilm" else "") + ("-custom" if custom else "")
    files = corpus_files(workdir, cfg)
    test_docs = read_jsonl(files["test"])
    gold_test = np.array([NAMES.index(d["label"]) for d in test_docs])
    log("setup", f"workdir {workdir}; {'QUICK smoke run' if args.quick else 'full protocol'}; "
                 f"pool {sum(1 for _ in open(files['pool']))} docs, test {len(test_docs)} docs; "
                 f"torch threads {torch.get_num_threads()}")
    print(f"MC dropout: {cfg['mc_passes']} passes for the (b) teachers on the pool "
          "(MUKA's certainty; the paper's default 16 costs too much CPU here). (a) teachers are "
          "cached without MC dropout, so MUKA in (a) uses the entropy of each teacher's softmax "
          "at T (the paper's no-MC ablation).", flush=True)

    results: dict = {"quick": args.quick, "workdir": str(workdir), "settings": cfg,
                     "student_init": args.student_init,
                     "student": {"model": ("the setting's first fine-tuned teacher"
                                           if args.student_init == "teacher0" else "all-MiniLM-L6-v2"),
                                 "layers": STUDENT_LAYERS,
                                 "pick": "even", "max_length": demo.MAX_LENGTH},
                     "teacher_finetune": {"epochs": cfg["teacher_epochs"], "lr": demo.LR,
                                          "head_lr": demo.HEAD_LR,
                                          "train_layers": demo.TRAIN_LAYERS,
                                          "max_length": demo.MAX_LENGTH, "batch_size": demo.BATCH},
                     "per_setting": earlier_settings(bench_name, cfg, args.student_init,
                                                     skip=args.settings),
                     "figures": {}}

    for setting in args.settings:
        names, mc, methods = SETTINGS[setting]
        t0 = time.perf_counter()
        log(setting, f"start: teachers {names}, methods {[m[0] for m in methods]}")
        models = {n: ensure_teacher(workdir, n, cfg) for n in names}
        entries = [teacher_entry(n, models[n], cfg["mc_passes"] if mc else None) for n in names]
        pool_config = cache_config(workdir, setting, files, entries, cfg)
        pool_summaries, test_summaries = run_cache(pool_config, setting)
        rows, logits = cached_logits(workdir / "cache", test_summaries)
        scores = ensemble_scores(setting, rows, logits, gold_test, names)
        for n, t in scores["teachers"].items():
            extra = "" if len(t["classes"]) == len(NAMES) else \
                f" (in-subset {t['in_subset_accuracy']:.4f} on its {len(t['classes'])} classes)"
            print(f"  {setting} teacher {n}: test accuracy {t['accuracy']:.4f}{extra}", flush=True)
        print(f"  {setting} ensemble: test accuracy {scores['ensemble']:.4f} [{scores['ensemble_rule']}]"
              f" (unweighted {scores['ensemble_mean']:.4f}, confidence-weighted "
              f"{scores['ensemble_weighted']:.4f})", flush=True)
        if "ensemble_good" in scores:
            print(f"  {setting} ensemble of the good teachers {scores['ensemble_good_teachers']}: "
                  f"test accuracy {scores['ensemble_good']:.4f}", flush=True)
        teacher_ids = [s["teacher_id"] for s in pool_summaries]
        students = {}
        for label, method, options in methods:
            students[label] = train_student(workdir, setting, label, method, options, pool_config,
                                            cfg, teacher_ids)
            acc = students[label]["eval"]["accuracy"]
            students[label]["ratio_to_ensemble"] = acc / scores["ensemble"]
            print(f"  {setting} student {label}: test accuracy {acc:.4f}, student / ensemble "
                  f"{acc / scores['ensemble']:.3f}, agreement with ensemble on the pool "
                  f"{students[label]['eval']['ensemble_agreement']:.3f}", flush=True)
            diag = students[label]["last_epoch_means"]
            if diag:
                print("    last-epoch means: " + ", ".join(f"{k} {v:.3f}" for k, v in diag.items()),
                      flush=True)
        results["per_setting"][setting] = {"teachers": names,
                                           "mc_dropout_passes": cfg["mc_passes"] if mc else None,
                                           "pool_teacher_ids": teacher_ids,
                                           "test_teacher_ids": [s["teacher_id"] for s in test_summaries],
                                           **scores, "students": students,
                                           "seconds": time.perf_counter() - t0}
        log(setting, f"done in {time.perf_counter() - t0:.0f} s")
        save(bench_name, results)   # partial results survive an interrupted run

    print(f"\n== figures ({'QUICK smoke run: not the benchmark' if args.quick else 'full protocol'}; "
          f"students: {STUDENT_LAYERS}-layer truncation of "
          f"{'the base MiniLM' if cfg['student_init'] == 'minilm' else 'the first fine-tuned teacher'}"
          f", train {cfg['train']}, (b) with {cfg['amalgamation_train']}) ==", flush=True)
    per = results["per_setting"]
    for setting, data in per.items():
        print(f"{setting}: "
              + ", ".join(f"teacher {n} {t['accuracy']:.4f}" for n, t in data["teachers"].items())
              + f"; ensemble {data['ensemble']:.4f}", flush=True)
        for label, s in data["students"].items():
            print(f"{setting}: student {label} {s['eval']['accuracy']:.4f} "
                  f"(student / ensemble {s['ratio_to_ensemble']:.3f})", flush=True)

    def acc(setting: str, label: str) -> float:
        return per[setting]["students"][label]["eval"]["accuracy"]

    if "a" in per:
        best = max(per["a"]["students"], key=lambda m: acc("a", m))
        ratio = acc("a", best) / per["a"]["ensemble"]
        line("(a) best student / ensemble", f"{ratio:.3f}", ratio, "target >= 0.99", results,
             best=best)
    if "a-poor" in per:
        diff = acc("a-poor", "govern") - acc("a-poor", "mean")
        line("(a-poor) govern - mean", points(diff), diff * 100, "target >= 0", results)
        gap = abs(acc("a-poor", "govern") - acc("a-poor", "median"))
        line("(a-poor) |govern - median|", f"{gap * 100:.1f} points", gap * 100, "target <= 1", results)
        best = max(per["a-poor"]["students"], key=lambda m: acc("a-poor", m))
        ratio = acc("a-poor", best) / per["a-poor"]["ensemble_good"]
        line("(a-poor) best student / ensemble of the good teachers", f"{ratio:.3f}", ratio,
             "target >= 0.99; mean of the two good teachers' softmax", results, best=best)
    ratios = {}
    for setting in ("b-overlapping", "b-disjoint"):
        if setting not in per:
            continue
        best_muka = max(("muka-soft", "muka-hard"), key=lambda m: acc(setting, m))
        diff = acc(setting, best_muka) - acc(setting, "mean")
        target = "target >= +5" if setting == "b-disjoint" else "no target; disjoint has one"
        line(f"({setting}) muka - vanilla KD", points(diff), diff * 100, target, results,
             muka_mode=best_muka)
        best = max(per[setting]["students"], key=lambda m: acc(setting, m))
        ratios[setting] = acc(setting, best) / per[setting]["ensemble"]
        line(f"({setting}) best student / union ensemble", f"{ratios[setting]:.3f}", ratios[setting],
             "target >= 0.97", results, best=best)
    if ratios:
        worst = min(ratios.values())
        line("(b) best student / union ensemble", f"{worst:.3f}", worst,
             "target >= 0.97; the lower of the two (b) variants", results)
    tokens = demo.MAX_LENGTH
    flops = flops_ratio([len(NAMES)] * 3, tokens)
    avg = mean_tokens([d["text"] for d in test_docs])
    at_avg = flops_ratio([len(NAMES)] * 3, round(avg))
    line("student FLOPs / ensemble FLOPs", f"{flops['ratio']:.3f}", flops["ratio"],
         f"3-layer student vs 3 x 6-layer teachers at {tokens} tokens; {at_avg['ratio']:.3f} at the "
         f"test set's mean {avg:.1f} tokens; pipeline/flops.py: per layer 2n(4H^2+2HI) + 4n^2 H, "
         f"+ head 2H(H+C); "
         f"MC-dropout passes not counted", results,
         at_max_length=flops, at_mean_length=at_avg)
    results["wall_seconds"] = time.perf_counter() - START
    print(f"wall time: {results['wall_seconds']:.0f} s", flush=True)
    save(bench_name, results)


if __name__ == "__main__":
    main()
