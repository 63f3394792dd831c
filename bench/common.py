"""Shared benchmark plumbing: quiet hermetic environment, interleaved timing, result lines."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).parent / "results"
WORDNET = Path(__file__).resolve().parents[1] / "pipeline" / "demo_data" / "wordnet12"


def hermetic_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="distill-bench-prefect-"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def interleaved(runs: dict[str, Callable[[], float | None]], repeats: int) -> dict[str, float]:
    """Median wall time of each callable, measured in turns so machine noise hits all of them
    alike. The order rotates each turn (A B C, B C A, C A B, ...): with a fixed order the last
    callable always ran on a process that had just freed the previous one's model, and on these
    VMs that position alone moved a ratio by a few percent. A callable may return its own time
    (to exclude its setup)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for turn in range(repeats):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            start = time.perf_counter()
            own = runs[name]()
            times[name].append(own if own is not None else time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def in_worker_thread(fn, *args):
    """Run `fn` in a fresh worker thread, as Prefect runs our shard tasks, and return its result.

    On our 2-core VMs the same PyTorch CPU forward loop measured 2.2x slower on the main thread
    than on a worker thread (11.5 s vs 5.2 s for 320 equal-length texts, the runner and the bare
    loop alike), so baselines run on worker threads too, to compare like with like.
    """
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def report(name: str, value: float, target: str, results: dict) -> None:
    print(f"{name}: {value:.3f} ({target})", flush=True)
    results[name] = {"value": value, "target": target}


def save(bench: str, results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{bench}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")
    return path


def wordnet_texts(split: str = "pool") -> list[str]:
    with open(WORDNET / f"{split}.jsonl") as f:
        return [json.loads(line)["text"] for line in f]
