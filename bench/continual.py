"""Continual distillation (issue 7, CDL-Prompt) on WordNet-12 with a real MiniLM teacher.

Tasks: the 12 classes in labels.json order, cut into 4 tasks of 3 classes. Each task's corpus is
its slice of the unlabelled pool (labels only decide which slice a document belongs to). The
tasks arrive one at a time: each is cached with the `cache-task` flow when it arrives (demo
teacher `a`, the fine-tuned all-MiniLM-L6-v2 of pipeline/demo.py), and the bench checks that the
earlier tasks' cache files stay byte-identical with the same mtimes.

Student: the pretrained (not fine-tuned) all-MiniLM-L6-v2 cut to 3 layers, so it knows nothing of
any task before it sees it (starting from the fine-tuned teacher would leak every task). Three
runs from the same caches, same CDL loss (0.5 CE on the teacher argmax + 0.5 T^2 KL over the
current task's classes, T = 2):

  prompts    CDL-Prompt: L2P pool (10 prompts of 4 vectors, top 3), frozen backbone; pool + head learn
  finetune   sequential fine-tuning without prompts, whole model trainable (must forget more)
  joint      all tasks at once, all classes (the upper bound)

Printed: the accuracy matrix (row i: after training task i; column j: test accuracy on task j,
class-incremental: argmax over every class seen so far), average accuracy over the 4 tasks after
the last one, and forgetting (mean over tasks 1-3 of best earlier accuracy minus final).

Run: python bench/continual.py [--workdir DIR] [--teachers DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, report, save  # noqa: E402

hermetic_env()

import yaml  # noqa: E402

from distill.pipeline import demo  # noqa: E402

TASK_SIZE = 4, 3                     # tasks x classes per task
MODES = ("prompts", "finetune", "joint")
POOL = {"pool_size": 10, "prompt_length": 4, "top_k": 3, "match_weight": 0.1, "ce_weight": 0.5}


def write_tasks(workdir: Path) -> list[dict]:
    """Per task, its slice of the pool as a text-only corpus, and its classes."""
    names = demo.labels()
    pool = demo.read_split("pool")
    tasks = []
    for t in range(TASK_SIZE[0]):
        labels = names[t * TASK_SIZE[1]:(t + 1) * TASK_SIZE[1]]
        path = workdir / "tasks" / f"task{t + 1}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in pool if d["label"] in labels))
        tasks.append({"name": f"task{t + 1}", "corpus": {"path": str(path), "rows_per_shard": 1024},
                      "labels": labels})
    return tasks


def write_config(workdir: Path, teacher: Path, tasks: list[dict], epochs: int) -> Path:
    from distill.pipeline.finetune import minilm_path

    config = {"cache": "cache", "tasks": tasks,
              "teachers": [{"name": "a", "model": str(teacher), "max_length": demo.MAX_LENGTH,
                            "batch_size": 64}],
              "student": {"model": str(minilm_path()), "layers": 3, "max_length": demo.MAX_LENGTH},
              "continual": POOL,
              "train": {"epochs": epochs, "batch_size": 16, "lr": 1e-4, "head_lr": 1e-2,
                        "temperature": 2.0, "seed": 0, "output": "runs"},
              "eval": {"path": str(demo.DATA / "test.jsonl"), "label_column": "label"}}
    path = workdir / "continual.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snapshot(cache: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()}


def matrix_lines(mode: str, out: dict) -> None:
    print(f"{mode}: accuracy matrix (row = after task i, column = on task j)", flush=True)
    for i, row in enumerate(out["matrix"]):
        label = "all tasks" if mode == "joint" else f"after {out['tasks'][i]}"
        print(f"  {label:>12}: " + "  ".join("  -  " if a is None else f"{a:.3f}" for a in row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="keeps teachers and caches (default: a temp dir)")
    parser.add_argument("--teachers", type=Path, help="a folder of demo teachers to reuse")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per task")
    args = parser.parse_args()
    from distill.flows.caching import cache_task
    from distill.pipeline.config import load_config
    from distill.pipeline.continual.trainer import train_continual
    from distill.pipeline.trainer import Progress

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="distill-continual-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher = demo.ensure_teachers(args.teachers or workdir / "teachers")["a"]
    tasks = write_tasks(workdir)
    path = write_config(workdir, teacher, tasks, args.epochs)
    print(f"[{time.perf_counter() - started:5.0f} s] teachers ready, tasks written", flush=True)
    results = {"tasks": tasks, "pool": POOL, "epochs": args.epochs, "modes": {}}
    untouched = True
    for task in tasks:                              # each task is cached as it arrives
        before = snapshot(workdir / "cache") if (workdir / "cache").exists() else {}
        rows = sum(s["rows"] for s in cache_task(str(path), task["name"]))
        after = snapshot(workdir / "cache")
        untouched &= all(after.get(p) == v for p, v in before.items())
        print(f"[{time.perf_counter() - started:5.0f} s] cached {task['name']} ({rows} rows)", flush=True)
    report("earlier tasks' cache files untouched when a task is cached (1 = yes)", float(untouched),
           "target 1", results)
    for mode in MODES:
        config = load_config(path)
        config.train.output = str(workdir / "runs" / mode)
        progress = Progress(step=lambda step, m, mode=mode: step % 25 or print(
            f"[{time.perf_counter() - started:5.0f} s] {mode} step {step} (stage {m['stage'] + 1}): "
            f"loss {m['loss']:.3f}", flush=True))
        out = train_continual(config, mode=mode, progress=progress)
        results["modes"][mode] = {k: out[k] for k in ("matrix", "average_accuracy", "forgetting",
                                                      "steps", "train_seconds")}
        print(f"[{time.perf_counter() - started:5.0f} s] {mode}: {out['steps']} steps in "
              f"{out['train_seconds']:.0f} s", flush=True)
        matrix_lines(mode, out)
    modes = results["modes"]
    for mode in MODES:
        report(f"{mode} average accuracy", modes[mode]["average_accuracy"],
               "joint is the upper bound" if mode != "joint" else "upper bound", results)
    for mode in MODES[:2]:
        report(f"{mode} forgetting", modes[mode]["forgetting"],
               "prompts must forget less than finetune", results)
    report("finetune forgetting - prompts forgetting", modes["finetune"]["forgetting"] -
           modes["prompts"]["forgetting"], "target > 0", results)
    print(f"total wall time: {time.perf_counter() - started:.0f} s", flush=True)
    save("continual", results)


if __name__ == "__main__":
    main()
