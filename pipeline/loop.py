"""The one training loop: every student and teacher we train runs through `Loop.run`.

The classification and causal-LM students (pipeline/trainer.py), continual distillation
(pipeline/continual/trainer.py) and teacher fine-tuning (pipeline/finetune.py) differ only in
their batches and in the loss of one batch; all of them get here, from one place: epochs x
batches on accelerate (one process, or DDP over processes/GPUs/nodes, mixed precision where
the device has it), gradient accumulation (closed at every epoch's end), an optimizer and
scheduler step per accumulated group, a checkpoint every N steps and at the end
(pipeline/checkpoints.py: written whole, with checksums, refused with other settings), and an
exact resume: the model, optimizer, scheduler and every rank's RNG come back from accelerate's
state, and the data order is a function of (seed, epoch) that the caller's `batches(epoch,
first)` starts at the saved batch, so a run stopped and resumed ends with the weights of one
that never stopped. Training time adds up
over the legs of a run.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.pipeline import checkpoints
from distill.pipeline.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Callbacks the caller may set: start(total_steps), step(step, metrics)."""

    start: Callable[[int], None] = lambda total: None
    step: Callable[[int, dict], None] = lambda step, metrics: None


@dataclass
class Cursor:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    seen_rows: int = 0          # this epoch, this rank: rows with weight 1
    seen_id_sum: int = 0        # their sample ids summed mod 2**64: an audit of "each row once"
    coverage: list = field(default_factory=list)
    train_seconds: float = 0.0  # all legs of the run before this one (resumes add up)
    state: dict = field(default_factory=dict)   # the caller's results so far (continual: matrix)

    def see(self, batch) -> None:
        real = batch.sample_ids[batch.weights.numpy() > 0].astype("uint64")
        self.seen_rows += len(real)
        self.seen_id_sum = (self.seen_id_sum + int(real.sum(dtype="uint64"))) % 2**64

    def close_epoch(self, accelerator) -> None:
        from accelerate.utils import gather_object

        ranks = gather_object([(self.seen_rows, self.seen_id_sum)])
        self.coverage.append({"epoch": self.epoch, "rows": sum(r for r, _ in ranks),
                              "id_sum": sum(s for _, s in ranks) % 2**64,
                              "rows_per_rank": [r for r, _ in ranks]})
        self.seen_rows = self.seen_id_sum = 0


def _mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_accelerator(mixed_precision: str = "auto"):
    """The accelerator of a run: the GPU when there is one, DDP under `accelerate launch`.
    Gradient accumulation is the loop's own (`Loop.accumulation`), not accelerate's: accelerate
    closes an accumulation at the end of an epoch only for DataLoaders it prepared, so over our
    streams an epoch's last partial group would run on into the next epoch, and a run would make
    fewer optimizer steps than its schedule counts."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    wanted = _mixed_precision(mixed_precision)
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != wanted:
        # accelerate keeps one state per process, so a second run with another precision in one
        # Python session (a notebook, the Python API) would stop with "restart your runtime".
        # One process can start over; the ranks of a launched DDP job cannot.
        if PartialState().num_processes > 1:
            raise ConfigError(f"train.mixed_precision: this job already trains in "
                              f"{AcceleratorState().mixed_precision}, not {wanted}; launch another "
                              "job for it")
        AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=wanted)


def linear_warmup(warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor at an optimizer step: linear warmup, then linear decay to 0
    (the formula of transformers' `get_linear_schedule_with_warmup`)."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def prepare(accelerator, model, optimizer, schedule: Callable[[int], float]):
    """The model, optimizer and a scheduler following `schedule` (factor per optimizer step),
    prepared for `accelerator`. accelerate steps a prepared scheduler once per process at every
    optimizer step (it assumes schedules count the batches of all processes), so the factor is
    read at `count // processes`: without that, two processes would reach the end of the
    schedule (learning rate 0) halfway through the run."""
    processes = accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda count: schedule(count // processes))
    return accelerator.prepare(model, optimizer, scheduler)


@dataclass
class Loop:
    """One run: prepared model, optimizer and scheduler, and what the caller brings.

    `batches(epoch, first)` yields the epoch's batches from batch `first` on, each with
    `sample_ids` and `weights` (0 for rows that only pad a rank); `loss(model, batch, device)`
    returns a `MethodOutput`. With `accumulation` N > 1, an optimizer step follows every N
    batches and the last batch of an epoch (`epoch_batches(epoch)` of them), each batch's loss
    divided by the size of its group, so a step is the mean gradient of its group's batches and
    every epoch makes ceil(batches / N) steps. `begin_epoch(epoch, first)` runs before an epoch's first batch
    (also when a resume enters it midway), `end_epoch(epoch, state)` after its last; `state` is
    kept in every checkpoint. With `folder` None nothing is checkpointed.
    """

    accelerator: object
    model: torch.nn.Module
    optimizer: object
    scheduler: object
    epochs: int
    total_steps: int
    batches: Callable[[int, int], Iterable]
    loss: Callable
    folder: Path | None = None
    settings: dict = field(default_factory=dict)
    checkpoint_every: int = 0
    accumulation: int = 1
    epoch_batches: Callable[[int], int] | None = None   # needed when accumulation > 1
    begin_epoch: Callable[[int, int], None] = lambda epoch, first: None
    end_epoch: Callable[[int, dict], None] = lambda epoch, state: None

    def finished(self, cursor: Cursor) -> bool:
        return cursor.epoch >= self.epochs

    def _group(self, epoch: int, batch: int) -> tuple[int, bool]:
        """(batches in the accumulation group of `batch`, whether the step follows it)."""
        if self.accumulation == 1:
            return 1, True
        total = self.epoch_batches(epoch)
        start = batch // self.accumulation * self.accumulation
        size = min(self.accumulation, total - start)
        return size, batch + 1 == start + size

    def run(self, *, resume: bool = False, max_steps: int | None = None,
            progress: Progress | None = None) -> Cursor:
        """Train to the end, or stop after `max_steps` optimizer steps (with a checkpoint), as an
        interrupted run would; `resume` continues from the latest usable checkpoint made with
        the same settings. Returns the cursor, `train_seconds` counting every leg."""
        accelerator, model, optimizer, scheduler = (self.accelerator, self.model, self.optimizer,
                                                    self.scheduler)
        progress = progress or Progress()
        cursor = Cursor(**checkpoints.load(accelerator, self.folder, self.settings)) if resume \
            else Cursor()
        started = time.perf_counter()

        def save_checkpoint() -> None:
            elapsed = cursor.train_seconds + time.perf_counter() - started
            checkpoints.save(accelerator, self.folder, {**cursor.__dict__, "train_seconds": elapsed},
                             self.settings, finished=self.finished(cursor))

        progress.start(self.total_steps)
        model.train()
        done = False
        for epoch in range(cursor.epoch, self.epochs):
            first = cursor.batch if epoch == cursor.epoch else 0
            self.begin_epoch(epoch, first)
            for b, batch in enumerate(self.batches(epoch, first), start=first):
                group, step_now = self._group(epoch, b)
                with contextlib.nullcontext() if step_now else accelerator.no_sync(model):
                    result = self.loss(model, batch, accelerator.device)
                    accelerator.backward(result.loss / group)
                if step_now:
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                cursor.epoch, cursor.batch = epoch, b + 1
                cursor.see(batch)
                if step_now:
                    cursor.step += 1
                    metrics = {"loss": result.loss.item(), **result.metrics, "epoch": epoch,
                               "lr": scheduler.get_last_lr()[0]}
                    cursor.history.append({"step": cursor.step, **metrics})
                    progress.step(cursor.step, metrics)
                    if self.folder and self.checkpoint_every and cursor.step % self.checkpoint_every == 0:
                        save_checkpoint()
                    if max_steps is not None and cursor.step >= max_steps:
                        done = True
                        break
            if done:
                break
            cursor.close_epoch(accelerator)
            self.end_epoch(epoch, cursor.state)
            cursor.epoch, cursor.batch = epoch + 1, 0
        if self.folder:
            save_checkpoint()
        cursor.train_seconds += time.perf_counter() - started
        return cursor


def start_over(accelerator, folder: Path, run: str) -> None:
    """A new run (no --resume) replaces a finished run in the same place, with a warning, and
    removes its checkpoints so the two never mix; an unfinished one is kept: it is refused."""
    found = checkpoints.complete(folder)
    if not found:
        return
    state = checkpoints.latest_state(folder)
    if state is None or not state.get("finished"):
        raise checkpoints.ResumeError(
            f"{folder.parent} holds an unfinished {run} run (checkpoint {found[-1].name}); "
            "continue it with --resume, or give this run another --output (delete that folder "
            "to start over)")
    log.warning("replacing the finished %s run in %s (a new run was asked for, not --resume)",
                run, folder.parent)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(folder)
    accelerator.wait_for_everyone()
