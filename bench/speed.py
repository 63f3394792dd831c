"""Training-side speed figures (bench/README.md, "Training speed"), real MiniLM teachers and student:

  data-path overhead = student steps/s streaming 3 teacher caches from disk
                       / steps/s with the same targets already in memory        (target >= 0.97)
  offline vs online  = wall time of online KD (3 teachers forward every step), 3 epochs
                       / wall time of caching once + 3 epochs from the cache
                       (target >= 0.8 x the FLOP ratio of the two)

The cache-side figures (throughput, size) are in bench/cache_speed.py.
Run: python bench/speed.py [--rows N] [--repeats R]
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
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from distill.pipeline.finetune import minilm_path  # noqa: E402
from distill.pipeline.flops import encoder_flops  # noqa: E402
from distill.pipeline.kinds import make_method  # noqa: E402
from distill.pipeline.kinds.classification.labels import build_label_space  # noqa: E402
from distill.pipeline.kinds.classification.methods.base import TeacherBatch  # noqa: E402
from distill.pipeline.kinds.classification.recipe import student_batch_loss  # noqa: E402
from distill.pipeline.kinds.classification.stream import Batch, ClassificationStream  # noqa: E402
from distill.pipeline.stream import prefetch  # noqa: E402
from distill.pipeline.student import build_student  # noqa: E402
from distill.storage.aligned import AlignedCache  # noqa: E402
from distill.storage.cache import Cache  # noqa: E402

CLASSES, BATCH, MAX_LENGTH, EPOCHS = 12, 32, 64, 3


def make_teachers(work: Path) -> list[Path]:
    """Three real MiniLM-L6 classifiers (heads seeded differently; their values do not matter
    for speed)."""
    paths = []
    for k in range(3):
        torch.manual_seed(k)
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_path(), num_labels=CLASSES, id2label={i: f"c{i}" for i in range(CLASSES)},
            label2id={f"c{i}": i for i in range(CLASSES)})
        path = work / f"teacher-{k}"
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
        paths.append(path)
    return paths


def write_config(work: Path, texts: list[str], teachers: list[Path]) -> Path:
    (work / "corpus.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 256},
              "teachers": [{"name": f"t{k}", "model": str(p), "max_length": MAX_LENGTH}
                           for k, p in enumerate(teachers)]}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Student:
    """A fresh 3-layer MiniLM student and its optimizer; `step` is one training step."""

    def __init__(self, labels):
        torch.manual_seed(0)
        self.model, self.tokenizer = build_student(minilm_path(), labels, layers=3)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.method = make_method("classification", "mean", temperature=2.0)

    def step(self, batch: Batch) -> None:
        loss = student_batch_loss(self.model, self.tokenizer, self.method, batch, "cpu", MAX_LENGTH).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def online_batches(teachers, tokenizer, stream: ClassificationStream, epoch: int):
    """Online KD: the same batches, but every teacher runs on them at every step."""
    for batch in stream.epoch(epoch):
        inputs = tokenizer(batch.texts, padding=True, truncation=True, max_length=MAX_LENGTH,
                           return_tensors="pt")
        with torch.inference_mode():
            logits = torch.stack([t(**inputs).logits.float() for t in teachers], dim=1)
        yield Batch(batch.texts, batch.sample_ids,
                    TeacherBatch(logits, batch.teachers.covered, batch.teachers.valid), batch.weights)


def unverified(stream: ClassificationStream):
    """One epoch read without the sha256 check, which the product never skips: only to measure
    what the check costs (the bench swaps the shard reader for the length of the epoch)."""
    import distill.storage.cache as cache_module

    verified = cache_module.read_table
    cache_module.read_table = lambda fs, path, sha256=None: verified(fs, path)
    try:
        yield from stream.epoch(0)
    finally:
        cache_module.read_table = verified


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-path-only", action="store_true",
                        help="measure the data-path overhead only (skips the minutes of online KD)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from distill.flows.caching import cache_teachers

    results = {"rows": args.rows, "batch_size": BATCH, "epochs": EPOCHS}
    with tempfile.TemporaryDirectory(prefix="distill-speed-") as d, \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        work = Path(d)
        teachers = make_teachers(work)
        config = write_config(work, wordnet_texts("pool")[:args.rows], teachers)
        cache_teachers(str(config))  # warm-up: Prefect's server, and the cache we stream
        cache = Cache(work / "cache")
        aligned = AlignedCache(cache, ["t0", "t1", "t2"])
        labels = build_label_space(aligned.manifests)
        stream = ClassificationStream(aligned, labels, BATCH, seed=0)
        in_memory = list(stream.epoch(0))

        # Data path: the same student step fed from disk (with prefetch; every shard verified
        # against its sha256 as it is read, as in training) or from memory.
        def run(source):
            student = Student(labels)
            start = time.perf_counter()
            for batch in source():
                student.step(batch)
            return time.perf_counter() - start

        t = interleaved({"disk": lambda: run(lambda: prefetch(stream.epoch(0))),
                         "disk-unverified": lambda: run(lambda: prefetch(unverified(stream))),
                         "memory": lambda: run(lambda: iter(in_memory))}, args.repeats)
        report("data-path overhead (steps/s from disk, sha256-verified / steps/s from memory)",
               t["memory"] / t["disk"], "target >= 0.97", results)
        report("cost of verifying (steps/s verified / steps/s with the sha256 check skipped)",
               t["disk-unverified"] / t["disk"], "for reference", results)
        # What the data path itself costs: one epoch's batches read, verified and built from
        # disk with no student, as a fraction of the epoch's training time from memory. The
        # ratios above can move by more than this on a noisy VM; this is the work they measure.
        build = interleaved({"build": lambda: sum(1 for _ in stream.epoch(0)) and None}, args.repeats)
        report("data-path work (seconds to build an epoch's batches from disk / its training seconds)",
               build["build"] / t["memory"], "for reference", results)
        if args.data_path_only:
            save("speed-data-path", results)
            return

        # Offline (cache once, then EPOCHS from the cache) vs online KD (teachers every step).
        models = [AutoModelForSequenceClassification.from_pretrained(p).eval() for p in teachers]
        tokenizer = AutoTokenizer.from_pretrained(teachers[0])

        def offline():
            fresh = work / f"offline-{time.perf_counter_ns()}"
            fresh.mkdir()
            fresh_config = write_config(fresh, wordnet_texts("pool")[:args.rows], teachers)
            start = time.perf_counter()
            cache_teachers(str(fresh_config))
            fresh_aligned = AlignedCache(Cache(fresh / "cache"), ["t0", "t1", "t2"])
            fresh_stream = ClassificationStream(fresh_aligned, labels, BATCH, seed=0)
            student = Student(labels)
            for epoch in range(EPOCHS):
                for batch in prefetch(fresh_stream.epoch(epoch)):
                    student.step(batch)
            return time.perf_counter() - start

        def online():
            student = Student(labels)
            start = time.perf_counter()
            for epoch in range(EPOCHS):
                for batch in online_batches(models, tokenizer, stream, epoch):
                    student.step(batch)
            return time.perf_counter() - start

        # Online KD is timed on the main thread and on a worker thread (see
        # bench.common.in_worker_thread); the faster of the two is the baseline.
        t = interleaved({"offline": offline, "online-main": online,
                         "online-worker": lambda: in_worker_thread(online)}, max(1, args.repeats - 1))
        t["online"] = min(t["online-main"], t["online-worker"])
        tokens = 32
        teacher_f = sum(encoder_flops(AutoConfig.from_pretrained(p), tokens) for p in teachers)
        student_f = encoder_flops(Student(labels).model.config, tokens)
        online_f = EPOCHS * (teacher_f + 3 * student_f)       # backward ~ 2x forward
        offline_f = teacher_f + EPOCHS * 3 * student_f
        flop_ratio = online_f / offline_f
        measured = t["online"] / t["offline"]
        results["offline_vs_online"] = {"online_main_s": t["online-main"],
                                        "online_worker_s": t["online-worker"],
                                        "offline_s": t["offline"], "flop_ratio": flop_ratio}
        report("offline vs online (online wall time / cache once + train from cache)", measured,
               f"FLOP ratio {flop_ratio:.2f}; target >= {0.8 * flop_ratio:.2f}", results)
        report("offline vs online, measured / FLOP ratio", measured / flop_ratio, "target >= 0.8", results)
    save("speed", results)


if __name__ == "__main__":
    main()
