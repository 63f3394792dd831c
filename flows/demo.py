"""`distill demo`: the pipeline end to end on the embedded WordNet-12 sample.

1. fine-tune three real MiniLM-L6 teachers once (reused on later runs),
2. cache every teacher over the unlabelled pool with the `cache-teachers` flow,
3. inspect the cache, and score each teacher against the pool's held-back labels by reading
   only the cache (no teacher runs again).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flows.caching import cache_teachers
from flows.progress import RichReporter, reporting
from flows.tables import print_cache_summary, print_report
from pipeline import demo
from storage.cache import Cache
from storage.columns import to_matrix
from storage.inspect import inspect_cache


def write_config(workdir: Path, teachers: dict[str, Path]) -> Path:
    config = {"cache": "cache",
              "corpus": {"path": str(demo.DATA / "pool.jsonl"), "text_column": "text",
                         "rows_per_shard": 1024},
              "teachers": [{"name": name, "model": str(path), "max_length": demo.MAX_LENGTH,
                            "batch_size": 64} for name, path in teachers.items()]}
    path = workdir / "distill.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def pool_accuracy(cache: Cache, summaries: list[dict]) -> dict[str, float]:
    """Each teacher's accuracy on the pool's held-back labels, read from the cache alone."""
    names = demo.labels()
    gold = np.array([names.index(d["label"]) for d in demo.read_split("pool")])
    accuracy = {}
    for s in summaries:
        plan = cache.load_plan(s["plan_id"])
        correct = total = 0
        for i in range(len(plan.shards)):
            rows = cache.read_text_shard(plan, i).column("row").to_numpy()
            logits = to_matrix(cache.read_shard(s["teacher_id"], i).column("logits"))
            correct += int((logits.argmax(1) == gold[rows]).sum())
            total += len(rows)
        accuracy[s["teacher"]] = correct / total
    return accuracy


def run_demo(workdir: Path, console: Console) -> None:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]1/3 teachers: fine-tune MiniLM-L6 on WordNet-12 (once)")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("steps"), TimeRemainingColumn(), console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(name: str, step: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"teacher {name}", total=total)
            bar.update(tasks[name], completed=step)

        teachers = demo.ensure_teachers(workdir / "teachers", progress)
    console.print(f"teachers in {workdir / 'teachers'}")
    config = write_config(workdir, teachers)
    console.rule(f"[bold]2/3 cache: `distill cache {config}`")
    with reporting(RichReporter(console)):
        summaries = cache_teachers(str(config))
    print_cache_summary(summaries, str(workdir / "cache"), console)
    console.rule(f"[bold]3/3 inspect: `distill inspect {workdir / 'cache'}`")
    cache = Cache(workdir / "cache")
    print_report(inspect_cache(cache), console)
    table = Table("teacher", "pool accuracy (held-back labels)", title="teachers, read from the cache")
    for name, acc in pool_accuracy(cache, summaries).items():
        table.add_row(name, f"{acc:.3f}")
    console.print(table)
    console.print("Next: the student trainer (`distill train`) streams this cache.")
