"""The fixed cost of a small job and the cost of growth (bench/README.md, "Scale").

  --fixed-cost   `distill cache` of a 50-row corpus with a tiny teacher: seconds to the first
                 published shard and to exit, each / a bare
                 `python -c "import torch, transformers, prefect"` (interleaved, median of
                 --repeats), with a timeline of the command's phases. Target: exit <= 2.5.
  --growth       `distill cache` and `distill train` (one epoch) at N and 4N rows: wall-time ratio
                 (target <= 4.2) and peak-RSS ratio (target <= 1.1) of the 4N run over the N run.
  --planning     planning a generated corpus of --plan-large rows vs --plan-small rows: peak RSS
                 ratio (target <= 1.2); `distill inspect` of a cache of --plan-small rows.
  --runners      the per-flow overhead of the threads, Ray and Dask runners: local cluster and
                 an existing one, first and second run, over the threads runner's time.

Every section runs the real CLI in subprocesses; peak RSS is the command's own process
(getrusage(RUSAGE_SELF) at its exit, written by a wrapper that runs the module). Sizes are flags, so
the issue's sizes run by default and a quick check can run small ones.

Run: python bench/scale.py [--fixed-cost] [--growth] [--planning] [--runners] [--rows N] [--repeats R]
(no section flag: all of them)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench.common import hermetic_env, report, save  # noqa: E402

hermetic_env()

BARE = "import torch, transformers, prefect"
# Run in the child of a timed `distill cache`: records when each of our phases starts and ends
# (wrapping our own functions once their module is imported) into TIMELINE, then runs the CLI.
TIMELINE_CHILD = r"""
import json, os, sys, threading, time
marks = [("start", time.time())]
out = os.environ["TIMELINE"]

def timed(module, owner, name, label):
    def wrap(obj):
        inner = getattr(obj, name)
        def call(*a, **k):
            marks.append((label + " start", time.time()))
            try:
                return inner(*a, **k)
            finally:
                marks.append((label + " end", time.time()))
        setattr(obj, name, call)
    def watch():  # wrap as soon as the module is imported (no import is moved by this)
        while module not in sys.modules or not hasattr(sys.modules[module], owner or name):
            time.sleep(0.002)
        wrap(getattr(sys.modules[module], owner) if owner else sys.modules[module])
    if module in sys.modules:
        watch()
    else:
        threading.Thread(target=watch, daemon=True).start()

import distill.flows.cli as cli
timed("distill.flows.cli", None, "_checked", "config + preflight")
timed("distill.flows.server", "ApiServer", "__init__", "server spawn")
timed("distill.flows.server", "ApiServer", "wait", "server wait")
timed("distill.flows.caching", None, "plan_corpus", "plan")
timed("distill.pipeline.caching", None, "load_inference", "model load")
timed("distill.flows.tables", None, "print_cache_summary", "summary")
try:
    cli.app()
finally:
    marks.append(("exit", time.time()))
    with open(out, "w") as f:
        json.dump(marks, f)
"""


def make_corpus(path: Path, rows: int, seed: int = 0) -> Path:
    """Generated sentences over the tiny teacher's vocabulary, one JSON line each."""
    import tiny

    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(rows):
            f.write(json.dumps({"text": " ".join(rng.choice(tiny.WORDS) for _ in range(rng.randint(3, 12)))})
                    + "\n")
    return path


def make_project(folder: Path, rows: int, rows_per_shard: int = 4096) -> Path:
    """A config of one tiny teacher (built from a config: tests/tiny.py) over `rows` rows."""
    import yaml

    import tiny

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "teacher").exists():
        tiny.classifier(folder / "teacher", layers=2)
    make_corpus(folder / "corpus.jsonl", rows)
    config = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": rows_per_shard},
              "teachers": [{"name": "a", "model": "teacher", "max_length": 32, "batch_size": 64}],
              "student": {"from_teacher": "a", "layers": 1, "max_length": 32},
              "train": {"method": "mean", "epochs": 1, "batch_size": 64, "output": "run"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def run_child(args: list[str], env: dict | None = None, watch: Path | None = None,
              cwd: Path | None = None) -> dict:
    """Run one child to its end: wall seconds and, with `watch`, seconds until the first shard
    entry (shard-*.json, written last when a shard is published) appears under that folder."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while proc.poll() is None:
        if watch is not None and first is None and any(watch.glob("teachers/*/shard-*.json")):
            first = time.perf_counter() - start
        time.sleep(0.01)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: exit {proc.returncode}: {err[-2000:]}")
    return {"wall": wall, "first_shard": first}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distill.flows.cli", *args]


# --- fixed cost -------------------------------------------------------------------------------

def fixed_cost(work: Path, repeats: int, results: dict) -> None:
    config = make_project(work / "fixed", 50)
    env = {**os.environ, "TIMELINE": str(work / "timeline.json")}
    env.pop("PREFECT_API_URL", None)
    runs: dict[str, list[float]] = {"bare": [], "first_shard": [], "exit": [], "cached_exit": []}
    timelines, startup = [], []
    for _ in range(repeats):  # interleaved: bare, a fresh cache, the same again (all cached)
        runs["bare"].append(run_child([sys.executable, "-c", BARE])["wall"])
        shutil.rmtree(config.parent / "cache", ignore_errors=True)
        timed = run_child([sys.executable, "-c", TIMELINE_CHILD, "cache", str(config)], env=env,
                          watch=config.parent / "cache", cwd=config.parent)
        runs["first_shard"].append(timed["first_shard"])
        runs["exit"].append(timed["wall"])
        marks = json.loads((work / "timeline.json").read_text())
        # the interpreter's own start, before the child's first line
        timelines.append([["start", marks[0][1]], ["python startup end", marks[0][1]],
                          *marks[1:]])
        startup.append(timed["wall"] - (marks[-1][1] - marks[0][1]))
        runs["cached_exit"].append(run_child(cli("cache", str(config)), cwd=config.parent)["wall"])
    median = {k: statistics.median(v) for k, v in runs.items()}
    print(f"fixed cost, medians of {repeats}: " + ", ".join(f"{k} {v:.1f} s" for k, v in median.items()))
    report("fixed cost: first shard / bare import", median["first_shard"] / median["bare"], "target <= 2.5",
           results)
    report("fixed cost: exit / bare import", median["exit"] / median["bare"], "target <= 2.5", results)
    report("fixed cost: exit with every shard cached / bare import", median["cached_exit"] / median["bare"],
           "no target", results)
    results["fixed cost seconds"] = {k: {"median": median[k], "runs": v} for k, v in runs.items()}
    phases = {"python startup": (0.0, statistics.median(startup)),
              **{k: (a + statistics.median(startup), b + statistics.median(startup))
                 for k, (a, b) in phase_table(timelines).items() if k != "python startup"}}
    results["fixed cost phases"] = phases
    print("phase (median seconds from process start; start .. end)")
    for name, (begin, end) in phases.items():
        print(f"  {name:22s} {begin:6.2f} .. {end:6.2f}")


def phase_table(timelines: list[list]) -> dict[str, tuple[float, float]]:
    """Median start and end of each phase, in seconds since the child's first line ran."""
    per: dict[str, dict[str, list[float]]] = {}
    for marks in timelines:
        t0 = marks[0][1]
        seen = set()
        for label, at in marks[1:]:
            name, _, edge = label.rpartition(" ")
            if not name:
                name, edge = label, "end"
            if (name, edge) in seen:  # the first call of each (a flow may call twice)
                continue
            seen.add((name, edge))
            per.setdefault(name, {"start": [], "end": []})[edge].append(at - t0)
    return {name: (statistics.median(e["start"] or e["end"]), statistics.median(e["end"]))
            for name, e in per.items()}


# --- growth -----------------------------------------------------------------------------------

# Runs a module as `python -m` would, then writes its own peak RSS (KiB) to SELF_PEAK: the
# command's process alone, not the Prefect server or cluster workers it starts.
SELF_PEAK_CHILD = r"""
import atexit, os, resource, runpy, sys
atexit.register(lambda: open(os.environ["SELF_PEAK"], "w").write(
    str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
module = sys.argv.pop(1)
sys.argv[0] = module
runpy.run_module(module, run_name="__main__")
"""


def measured(work: Path, module: str, *args: str, cwd: Path | None = None,
             env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, the process's own peak RSS in MiB) of `python -m module args`."""
    peak = work / "self-peak"
    env = {**(env or os.environ), "SELF_PEAK": str(peak)}
    done = run_child([sys.executable, "-c", SELF_PEAK_CHILD, module, *args], env=env, cwd=cwd)
    return done["wall"], int(peak.read_text()) / 1024


def growth(work: Path, rows: int, repeats: int, results: dict) -> Path:
    """Cache, then train one epoch, at `rows` and 4x `rows`; returns the larger config."""
    configs = {n: make_project(work / f"grow-{n}", n) for n in (rows, 4 * rows)}
    samples: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for config in configs.values():
            for leftover in ("cache", "run"):
                shutil.rmtree(config.parent / leftover, ignore_errors=True)
        for step in ("cache", "train"):
            for n, config in configs.items():
                samples.setdefault(f"{step} {n}", []).append(
                    measured(work, "distill.flows.cli", step, str(config), cwd=config.parent))
    small, large = rows, 4 * rows
    for step in ("cache", "train"):
        wall = {n: statistics.median(w for w, _ in samples[f"{step} {n}"]) for n in (small, large)}
        rss = {n: statistics.median(r for _, r in samples[f"{step} {n}"]) for n in (small, large)}
        print(f"{step}: {small} rows {wall[small]:.1f} s {rss[small]:.0f} MiB; "
              f"{large} rows {wall[large]:.1f} s {rss[large]:.0f} MiB")
        report(f"growth: {step} wall time, {large} / {small} rows", wall[large] / wall[small],
               "target <= 4.2", results)
        report(f"growth: {step} peak RSS, {large} / {small} rows", rss[large] / rss[small],
               "target <= 1.1", results)
        results[f"growth {step}"] = {"rows": [small, large], "seconds": [wall[small], wall[large]],
                                     "peak_mib": [rss[small], rss[large]]}
    return configs[large]


# --- planning and inspect --------------------------------------------------------------------

PLAN_CHILD = """
import sys
from distill.pipeline.config import CorpusConfig
from distill.pipeline.corpus import plan_corpus
from distill.storage.cache import Cache
plan = plan_corpus(Cache(sys.argv[1]), CorpusConfig(path=sys.argv[2]))
print(plan.rows, len(plan.shards))
"""


def planning(work: Path, small: int, large: int, results: dict) -> None:
    """Plan a generated corpus of `small` and of `large` rows: peak RSS and time of each."""
    figures = {}
    for n in (small, large):
        corpus = make_corpus(work / f"plan-{n}.jsonl", n, seed=n)
        script = work / "plan_child.py"
        script.write_text(PLAN_CHILD)
        peak = work / "self-peak"
        wrapped = SELF_PEAK_CHILD.replace("runpy.run_module(module, run_name=\"__main__\")",
                                          "runpy.run_path(module, run_name=\"__main__\")")
        done = run_child([sys.executable, "-c", wrapped, str(script), str(work / f"plan-cache-{n}"),
                          str(corpus)], env={**os.environ, "SELF_PEAK": str(peak)})
        figures[n] = (done["wall"], int(peak.read_text()) / 1024)
        corpus.unlink()
        shutil.rmtree(work / f"plan-cache-{n}", ignore_errors=True)
        print(f"plan {n} rows: {figures[n][0]:.1f} s, peak RSS {figures[n][1]:.0f} MiB")
    report(f"planning: peak RSS, {large} / {small} rows", figures[large][1] / figures[small][1],
           "target <= 1.2", results)
    results["planning"] = {"rows": [small, large], "seconds": [figures[n][0] for n in (small, large)],
                           "peak_mib": [figures[n][1] for n in (small, large)]}


def inspection(work: Path, config: Path, results: dict) -> None:
    """`distill inspect` of the cache `config` wrote (its rows are in the result)."""
    cache = config.parent / "cache"
    if not cache.exists():
        run_child(cli("cache", str(config)), cwd=config.parent)
    wall, peak = measured(work, "distill.flows.cli", "inspect", str(cache), "--json")
    rows = sum(1 for _ in (config.parent / "corpus.jsonl").open())
    print(f"inspect of a {rows}-row cache: {wall:.1f} s, peak RSS {peak:.0f} MiB")
    results["inspect"] = {"rows": rows, "seconds": wall, "peak_mib": peak}


# --- runners ---------------------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """An existing cluster on loopback, started here the way an operator would."""

    def __init__(self, kind: str, work: Path):
        self.kind, self.procs = kind, []
        port = free_port()
        bin_dir = Path(sys.executable).parent
        log = (work / f"{kind}-cluster.log").open("ab")
        if kind == "ray":
            subprocess.run([str(bin_dir / "ray"), "start", "--head", "--port", str(port),
                            "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                            "--disable-usage-stats"], check=True, stdout=log, stderr=log)
            self.address = f"127.0.0.1:{port}"
        else:
            self.address = f"tcp://127.0.0.1:{port}"
            self.procs.append(subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host",
                                                "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                               stdout=log, stderr=log))
            self.procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", self.address,
                                                "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                               stdout=log, stderr=log, cwd=work))
            time.sleep(5)

    def stop(self) -> None:
        if self.kind == "ray":
            subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"],
                           capture_output=True)
        for proc in self.procs:
            proc.terminate()
            proc.wait(30)


def runners(work: Path, rows: int, results: dict) -> None:
    """Seconds of `distill cache` per runner (a fresh cache each run, so every run computes),
    first and second run; overhead = seconds - the threads runner's."""
    config = make_project(work / "runners", rows)
    table: dict[str, list[float]] = {}

    def twice(name: str, *extra: str) -> None:
        for _ in range(2):
            shutil.rmtree(config.parent / "cache", ignore_errors=True)
            table.setdefault(name, []).append(run_child(cli("cache", str(config), *extra),
                                                        cwd=config.parent)["wall"])
        print(f"{name}: first {table[name][0]:.1f} s, second {table[name][1]:.1f} s", flush=True)

    twice("threads")
    for kind in ("ray", "dask"):
        try:
            twice(f"{kind}, local cluster", "--runner", kind)
            cluster = Cluster(kind, work)
            try:
                twice(f"{kind}, existing cluster", "--runner", kind, "--address", cluster.address)
            finally:
                cluster.stop()
        except (RuntimeError, subprocess.CalledProcessError, FileNotFoundError) as e:
            print(f"{kind}: not measured ({str(e)[-300:]})")
            results[f"runners {kind} error"] = str(e)[-1000:]
    base = table["threads"]
    results["runners"] = {name: {"seconds": t, "overhead_s": [a - b for a, b in zip(t, base)]}
                          for name, t in table.items()}
    print("runner                      first run          second run   (overhead over threads)")
    for name, t in table.items():
        print(f"  {name:24s} {t[0]:6.1f} s ({t[0] - base[0]:+6.1f})  {t[1]:6.1f} s ({t[1] - base[1]:+6.1f})")


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for section in ("--fixed-cost", "--growth", "--planning", "--runners"):
        parser.add_argument(section, action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="of the fixed cost (growth: --growth-repeats)")
    parser.add_argument("--growth-repeats", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20_000, help="N of the growth runs (N and 4N)")
    parser.add_argument("--plan-small", type=int, default=1_000_000)
    parser.add_argument("--plan-large", type=int, default=10_000_000)
    parser.add_argument("--inspect-rows", type=int, default=1_000_000, help="rows of the inspected cache")
    parser.add_argument("--runner-rows", type=int, default=2_000)
    parser.add_argument("--out", default="scale", help="bench/results/OUT.json")
    args = parser.parse_args()
    sections = ("fixed_cost", "growth", "planning", "runners")
    everything = not any(getattr(args, s) for s in sections)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="distill-scale-") as tmp:
        work = Path(tmp)
        if everything or args.fixed_cost:
            fixed_cost(work, args.repeats, results)
            save(args.out, results)  # after each section: a long run keeps what it measured
        if everything or args.growth:
            growth(work, args.rows, args.growth_repeats, results)
            save(args.out, results)  # after each section: a long run keeps what it measured
        if everything or args.planning:
            planning(work, args.plan_small, args.plan_large, results)
            inspection(work, make_project(work / "inspect", args.inspect_rows, rows_per_shard=16384),
                       results)
            save(args.out, results)
        if everything or args.runners:
            runners(work, args.runner_rows, results)
            save(args.out, results)  # after each section: a long run keeps what it measured
    save(args.out, results)


if __name__ == "__main__":
    main()
