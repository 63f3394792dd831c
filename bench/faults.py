"""Fault injection: random SIGKILLs and random damage to the files of a cache and a run folder,
each followed by the commands a user would run, through the real `distill` CLI in subprocesses.

  rows lost / rows duplicated   after every completed (killed and re-run) `distill cache`: each
                                teacher's shards against the plan's sample ids, exactly once each
  damaged bytes trained on      a `distill train` that exited 0 with a student that differs from
                                the reference (training is deterministic)
  bad inputs -> traceback       commands that printed a Python traceback after damage or a kill
  final student == reference    after `distill train` killed at random points and resumed

Targets 0, 0, 0, 0, yes. Setup: 3 teachers = all-MiniLM-L6-v2 cut to its first 2 layers with
differently seeded 12-way heads (2 layers keep it fast), WordNet pool text, small shards, a
1-layer student cut from teacher t0, checkpoints every few steps. The commands share one Prefect
server (PREFECT_API_URL, as with `prefect server start`): a command's own server would add ~10 s
to each of the ~150 commands; test_orphans.py covers killing those. A refusal (exit 2) is
answered as a user would: by doing what its message says (delete the named file or folder, re-
run `distill cache`, run with or without --resume); a refusal that names none of these counts as
"no usable fix". After damage to the cache, `distill train` is skipped when `distill cache` left
the cache byte-identical to the reference's (same bytes in, same student out: the kill runs
check that determinism); after damage to a checkpoint, `distill cache` is skipped (the cache is
untouched).
Run: python bench/faults.py [--seed S] [--kills N] [--flips N] [--rows N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import hermetic_env, save, wordnet_texts  # noqa: E402

hermetic_env()
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CLASSES, TEACHERS, MAX_LENGTH = 12, 3, 32
TRAIN = {"method": "mean", "epochs": 2, "batch_size": 16, "lr": 1e-4, "checkpoint_every": 5,
         "output": "runs"}
STUDENT = "runs/mean/student/model.safetensors"
CHECKPOINTS = "runs/mean/checkpoints"
TRACEBACK = "Traceback (most recent call last)"
MAX_STEPS = 8  # commands per fault before it counts as not converging


# ---- setup ------------------------------------------------------------------------------

def make_teachers(work: Path) -> list[Path]:
    """MiniLM-L6 cut to 2 layers, heads seeded differently (their values do not matter here)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.pipeline.finetune import minilm_path

    paths = []
    for k in range(TEACHERS):
        torch.manual_seed(k)
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_path(), num_hidden_layers=2, num_labels=CLASSES,
            id2label={i: f"c{i}" for i in range(CLASSES)}, label2id={f"c{i}": i for i in range(CLASSES)})
        path = work / f"teacher-{k}"
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
        paths.append(path)
    return paths


def write_config(work: Path, texts: list[str], teachers: list[Path], rows_per_shard: int) -> Path:
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": rows_per_shard},
              "teachers": [{"name": f"t{k}", "model": str(p), "max_length": MAX_LENGTH, "batch_size": 16}
                           for k, p in enumerate(teachers)],
              "student": {"from_teacher": "t0", "layers": 1, "max_length": MAX_LENGTH},
              "train": TRAIN, "runner": {"workers": 1}}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# ---- running the CLI ----------------------------------------------------------------------

@dataclass
class Result:
    args: list[str]
    rc: int | None          # None: killed by us
    stderr: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.stderr

    def error_lines(self) -> list[str]:
        """The command's error message: its last `error:` line and any lines after it."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
        return lines[starts[-1]:] if starts else lines[-1:]

    def error(self) -> str:
        return " ".join(" ".join(self.error_lines()).split())


class Cli:
    """`python -m distill.flows.cli ARGS` in `work`, in its own session (so a kill is like a
    user's), on the shared Prefect server; `kill_after` sends SIGKILL to the whole session
    after that many seconds. Each command dies with this process, however it ends."""

    def __init__(self, work: Path, api_url: str):
        self.work = work
        self.env = {**os.environ, "PREFECT_API_URL": api_url}

    def start(self, args, stderr=subprocess.DEVNULL) -> subprocess.Popen:
        from distill.flows.server import die_with_parent

        return subprocess.Popen([sys.executable, "-m", "distill.flows.cli", *args], cwd=self.work,
                                env=self.env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, preexec_fn=die_with_parent())

    def __call__(self, *args: str, kill_after: float | None = None) -> Result:
        start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as err:
            proc = self.start(args, err)
            try:
                rc = proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
            finally:
                _reap(proc.pid)
            err.seek(0)
            return Result(list(args), rc, err.read(), time.perf_counter() - start)


def _reap(group: int) -> None:
    """Whatever of the session is left (nothing, normally) goes too: a fault must not leak."""
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- checks -------------------------------------------------------------------------------

def arrow_ids(path: Path) -> list[int]:
    return pa.ipc.open_stream(pa.memory_map(str(path))).read_all().column("sample_id").to_pylist()


def lost_and_duplicated(cache: Path) -> tuple[int, int]:
    """Rows of the plan missing from a teacher, and rows a teacher has more often than the plan,
    summed over teachers; read from the files directly, not through our readers."""
    (plan_dir,) = [p for p in (cache / "corpora").iterdir() if (p / "plan.json").exists()]
    plan = json.loads((plan_dir / "plan.json").read_text())
    expected = Counter(i for s in plan["shards"] for i in arrow_ids(plan_dir / s["file"]))
    lost = duplicated = 0
    teachers = [p for p in (cache / "teachers").iterdir() if (p / "manifest.json").exists()]
    for folder in teachers:
        manifest = json.loads((folder / "manifest.json").read_text())
        got = Counter(i for s in manifest["shards"] for i in arrow_ids(folder / s["file"]))
        lost += sum((expected - got).values())
        duplicated += sum((got - expected).values())
    lost += (TEACHERS - len(teachers)) * sum(expected.values())
    return lost, duplicated


def student_bytes(work: Path) -> bytes | None:
    path = work / STUDENT
    return path.read_bytes() if path.exists() else None


# ---- following a refusal's fix, as a user would -------------------------------------------

DELETE = re.compile(r"\b[Dd]elete (?:it|the folder|(\S+))(?=[\s,;.:)]|$)")


def next_command(result: Result, resume: bool, work: Path) -> tuple[str, ...] | None:
    """The command a user runs after `result` refused (exit 2), having done what its message says
    (deleting what it names); None when the message names no fix we can follow."""
    message = result.error()  # all of it: a user reads a message that spans lines whole
    deleted = _delete_named(message, work)
    if "without --resume" in message:
        return ("train", "config.yaml")
    if "distill cache" in message:
        return ("cache", "config.yaml")
    if "--resume" in message and not resume:
        return ("train", "config.yaml", "--resume")
    if deleted:
        return ("cache", "config.yaml") if result.args[0] == "cache" else tuple(result.args)
    return None


def _delete_named(message: str, work: Path) -> bool:
    """Delete what the message tells the user to delete: a path it names, or (for "delete it",
    "delete the folder") the first path in the message and that path's folder."""
    match = DELETE.search(message)
    if not match:
        return False
    paths = re.findall(r"(/\S+?|[\w.-]+/\S+?)[:,;)]?(?=\s|$)", message)
    target = match.group(1) or (paths[0] if paths else None)
    if target is None:
        return False
    target = Path(target.strip(".,;:()'`\""))
    target = target if target.is_absolute() else work / target
    if match.group(0).startswith(("delete the folder", "Delete the folder")) and target.is_file():
        target = target.parent
    if not target.exists() or work.resolve() not in target.resolve().parents:
        return False
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    return True


@dataclass
class Tally:
    kills: int = 0
    flips: int = 0
    commands: int = 0
    refusals: int = 0
    refusals_without_fix: int = 0
    multi_line_refusals: int = 0
    repairs: int = 0
    trains_skipped: int = 0
    tracebacks: int = 0
    other_failures: int = 0
    not_converged: int = 0
    damaged_trained_on: int = 0
    rows_lost: int = 0
    rows_duplicated: int = 0
    resumed_equal: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    refused: list = field(default_factory=list)

    def note(self, result: Result, what: str) -> None:
        self.commands += 1
        if result.traceback:
            self.tracebacks += 1
            self.problems.append(f"traceback: {what}: distill {' '.join(result.args)} -> "
                                 f"{result.error()[:300]}")
        if result.rc == 2:
            self.refusals += 1
            if len(result.error_lines()) > 1:
                self.multi_line_refusals += 1
                self.problems.append(f"refusal on {len(result.error_lines())} lines: {what}: "
                                     f"{result.error()[:300]}")
            self.refused.append(f"{what}: distill {' '.join(result.args)} -> {result.error()}")
        elif result.rc not in (0, 2, None):
            self.other_failures += 1
            self.problems.append(f"exit {result.rc}: {what}: distill {' '.join(result.args)} -> "
                                 f"{result.error()[:300]}")


def until_done(cli: Cli, tally: Tally, first: tuple[str, ...], what: str) -> Result | None:
    """Run `first`, then whatever its refusals say, until a command succeeds; that result, or
    None when a refusal names no fix or it does not settle in MAX_STEPS commands."""
    args = first
    for _ in range(MAX_STEPS):
        result = cli(*args)
        tally.note(result, what)
        if result.rc == 0:
            return result
        if result.rc != 2:
            return None
        args = next_command(result, "--resume" in args, cli.work)
        if args is None:
            tally.refusals_without_fix += 1
            tally.problems.append(f"no usable fix: {what}: {result.error()[:300]}")
            return None
    tally.not_converged += 1
    tally.problems.append(f"did not settle in {MAX_STEPS} commands: {what}")
    return None


# ---- the faults ---------------------------------------------------------------------------

def kill_caching(cli: Cli, tally: Tally, rng: random.Random, kills: int, duration: float) -> None:
    """Fresh caches, each killed 1-3 times at random times after start (every re-run picks up
    what the last one published), then run to completion and checked row by row."""
    while tally.kills < kills:
        shutil.rmtree(cli.work / "cache", ignore_errors=True)
        for _ in range(min(rng.randint(1, 3), kills - tally.kills)):
            result = cli("cache", "config.yaml", kill_after=rng.uniform(0.15, 0.9) * duration)
            tally.note(result, "cache after a kill")
            tally.kills += result.rc is None
        if until_done(cli, tally, ("cache", "config.yaml"), "cache after a kill") is None:
            continue
        lost, duplicated = lost_and_duplicated(cli.work / "cache")
        tally.rows_lost += lost
        tally.rows_duplicated += duplicated
        print(f"  cache killed and re-run ({tally.kills} kills so far): {lost} rows lost, "
              f"{duplicated} duplicated", flush=True)
        if lost or duplicated:
            tally.problems.append(f"cache killed and re-run: {lost} rows lost, {duplicated} duplicated")


def kill_training(cli: Cli, tally: Tally, rng: random.Random, kills: int, duration: float,
                  reference: bytes) -> None:
    """One run killed `kills` times at random points (a fresh start, then --resume), then
    resumed to the end; is its student the reference?"""
    shutil.rmtree(cli.work / "runs", ignore_errors=True)
    args: tuple[str, ...] = ("train", "config.yaml")
    done = 0
    while done < kills:
        result = cli(*args, kill_after=rng.uniform(0.2, 0.8) * duration)
        tally.note(result, "train after a kill")
        if result.rc is None:
            done += 1
            tally.kills += 1
            if any((cli.work / CHECKPOINTS).glob("step-*")):
                args = ("train", "config.yaml", "--resume")
        elif result.rc == 0:  # finished before the kill: compare, and start the run again
            tally.resumed_equal.append(student_bytes(cli.work) == reference)
            shutil.rmtree(cli.work / "runs", ignore_errors=True)
            args = ("train", "config.yaml")
        else:
            args = next_command(result, "--resume" in args, cli.work) or ("train", "config.yaml")
    final = until_done(cli, tally, ("train", "config.yaml", "--resume"), "train after kills")
    tally.resumed_equal.append(final is not None and student_bytes(cli.work) == reference)
    print(f"  training killed {done} times and resumed: student equals the reference: "
          f"{tally.resumed_equal[-1]}", flush=True)


def damage(path: Path, rng: random.Random) -> str:
    """Flip one byte at a random offset, or truncate at a random length."""
    data = bytearray(path.read_bytes())
    if data and rng.random() < 0.6:
        at = rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        return f"byte {at} of {len(data)} flipped"
    size = rng.randrange(len(data)) if data else 0
    path.write_bytes(bytes(data[:size]))
    return f"truncated {len(data)} -> {size} bytes"


TARGETS = {
    "teacher shard": "cache/teachers/*/shard-*.arrow",
    "shard entry": "cache/teachers/*/shard-*.json",
    "manifest": "cache/teachers/*/manifest.json",
    "plan": "cache/corpora/*/plan.json",
    "text shard": "cache/corpora/*/text-*.arrow",
    "checkpoint": f"{CHECKPOINTS}/*/*",
}


def restore(work: Path, snapshot: Path, unfinished: bool) -> None:
    """The pristine cache, and either no run folder or the unfinished run's."""
    for name in ("cache", "runs"):
        shutil.rmtree(work / name, ignore_errors=True)
    shutil.copytree(snapshot / "cache", work / "cache")
    if unfinished:
        shutil.copytree(snapshot / "runs", work / "runs")


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def after_damage(cli: Cli, tally: Tally, what: str, unfinished: bool, pristine: dict,
                 reference: bytes) -> str:
    """The user's commands after one fault; how it ended."""
    if not unfinished:
        if until_done(cli, tally, ("cache", "config.yaml"), what) is None:
            return "unresolved"
        if tree_bytes(cli.work / "cache") == pristine:
            tally.trains_skipped += 1
            tally.repairs += 1
            return "cache restored byte-identical"
    train = ("train", "config.yaml") + (("--resume",) if unfinished else ())
    if until_done(cli, tally, train, what) is None:
        return "unresolved"
    if student_bytes(cli.work) != reference:
        tally.damaged_trained_on += 1
        tally.problems.append(f"damaged bytes trained on: {what}")
        return "DIFFERENT student, exit 0"
    tally.repairs += 1
    return "same student"


def flip_and_follow(cli: Cli, tally: Tally, rng: random.Random, flips: int, snapshot: Path,
                    reference: bytes) -> None:
    """Each fault: restore, damage one random file of a random kind, then the user's commands."""
    pristine = tree_bytes(snapshot / "cache")
    while tally.flips < flips:
        kind = rng.choice(sorted(TARGETS))
        unfinished = kind == "checkpoint"
        restore(cli.work, snapshot, unfinished)
        target = rng.choice(sorted(p for p in cli.work.glob(TARGETS[kind]) if p.is_file()))
        what = f"{kind} {target.relative_to(cli.work)} ({damage(target, rng)})"
        tally.flips += 1
        refusals = tally.refusals
        ended = after_damage(cli, tally, what, unfinished, pristine, reference)
        print(f"  {tally.flips}. {what}: {ended}"
              f"{f' after {tally.refusals - refusals} refusal(s)' if tally.refusals > refusals else ''}",
              flush=True)


def unfinished_run(cli: Cli, duration: float) -> None:
    """A run killed once it has two checkpoints (the fallback has one to fall back on)."""
    shutil.rmtree(cli.work / "runs", ignore_errors=True)
    proc = cli.start(("train", "config.yaml"))
    folder = cli.work / CHECKPOINTS
    try:
        deadline = time.monotonic() + 3 * duration
        while len(list(folder.glob("step-*"))) < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the training ended before it had two checkpoints; lower "
                                   "train.checkpoint_every")
            time.sleep(0.05)
    finally:
        _reap(proc.pid)
        proc.wait()


# ---- main ---------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--rows-per-shard", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards; default a temp dir")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed: {seed}", flush=True)
    rng = random.Random(seed)
    began = time.perf_counter()
    from distill.flows.server import ApiServer

    server = ApiServer()
    try:
        with tempfile.TemporaryDirectory(prefix="distill-faults-") as tmp:
            work = args.workdir or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            write_config(work, wordnet_texts("pool")[:args.rows], make_teachers(work), args.rows_per_shard)
            server.wait(180)
            tally = run_faults(Cli(work, server.api_url), rng, args)
    finally:
        server.stop()
    report(tally, seed, time.perf_counter() - began, args)


def run_faults(cli: Cli, rng: random.Random, args) -> Tally:
    """The clean reference, then the kills, then the damage."""
    tally = Tally()
    cached = cli("cache", "config.yaml")
    trained = cli("train", "config.yaml")
    reference = student_bytes(cli.work)
    if cached.rc or trained.rc or reference is None:
        sys.exit(f"the clean reference run failed: {cached.error()} {trained.error()}")
    print(f"reference: cache {cached.seconds:.0f} s, train {trained.seconds:.0f} s", flush=True)
    snapshot = cli.work / "snapshot"
    shutil.copytree(cli.work / "cache", snapshot / "cache")
    unfinished_run(cli, trained.seconds)
    shutil.copytree(cli.work / "runs", snapshot / "runs")
    kill_caching(cli, tally, rng, args.kills // 2, cached.seconds)
    kill_training(cli, tally, rng, args.kills - args.kills // 2, trained.seconds, reference)
    flip_and_follow(cli, tally, rng, args.flips, snapshot, reference)
    return tally


def report(tally: Tally, seed: int, wall: float, args) -> None:
    equal = bool(tally.resumed_equal) and all(tally.resumed_equal)
    results = {"seed": seed, "rows": args.rows, "rows_per_shard": args.rows_per_shard,
               "train": TRAIN}
    for name, value, target in [
            ("rows lost", tally.rows_lost, "target 0"),
            ("rows duplicated", tally.rows_duplicated, "target 0"),
            ("damaged bytes trained on", tally.damaged_trained_on, "target 0"),
            ("bad inputs that ended in a traceback", tally.tracebacks, "target 0"),
            ("refusals whose message named no usable fix", tally.refusals_without_fix, "target 0"),
            ("refusals on more than one line", tally.multi_line_refusals, "target 0"),
            ("final student equals an uninterrupted run", "yes" if equal else "no", "target yes")]:
        print(f"{name}: {value} ({target})", flush=True)
        results[name] = {"value": value, "target": target}
    counts = {"kills": tally.kills, "flips": tally.flips, "commands": tally.commands,
              "refusals": tally.refusals, "repairs (faults ending in the reference student)":
              tally.repairs, "trains skipped (cache restored byte-identical)": tally.trains_skipped,
              "other failures (exit not 0 or 2)": tally.other_failures,
              "faults that did not settle": tally.not_converged, "wall time (s)": round(wall)}
    for name, value in counts.items():
        print(f"{name}: {value}", flush=True)
    results.update(counts)
    results["problems"], results["refused"] = tally.problems, tally.refused
    for problem in tally.problems:
        print(f"  problem: {problem}", flush=True)
    save("faults", results)


if __name__ == "__main__":
    main()
