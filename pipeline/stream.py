"""Stream aligned teacher caches as training batches: the order every kind shares (each kind's
stream, pipeline/kinds/*/stream.py, turns the gathered rows into its batches).

Why our own loop instead of `datasets`/DataLoader sharding: the order must be a pure function
of (seed, epoch) so that a run resumed mid-epoch continues with exactly the batches it would
have seen, and so that DDP ranks split rows without reading anything to agree on it
(docs/scaling.md, "Training on several processes": the library paths either read everything on rank 0,
read everything on every rank, or lose the shuffle buffer on resume). Shards are memory-mapped
Arrow, so a batch is a gather of the rows it needs, and a background thread prepares the next
batches while the student trains.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from typing import Iterator

import numpy as np
import pyarrow.compute as pc
import torch

from distill.storage.aligned import AlignedCache, AlignedShard

GROUP_FACTOR = 16   # steps per length-sorted mega-batch (HF's Trainer uses 50)


class CacheStream(ABC):
    """Deterministic, resumable, rank-split batches over an `AlignedCache`.

    Epoch order: shards in a seeded permutation, rows shuffled within windows of
    `buffer_shards` consecutive shards (a shuffle buffer that needs no state to resume).
    With `group_by_length`, each window is then cut into mega-batches of `GROUP_FACTOR` steps,
    sorted by text length inside, and its step-sized chunks are shuffled: batches of similar
    length pad far less (WordNet-12: 32 instead of 53 tokens per row on average), as in the
    `group_by_length` of Hugging Face's Trainer, and the order stays a function of (seed, epoch).
    Rank r of `world` takes every world-th row of that order; ranks with one row fewer pad
    their last batch with a weight-0 row, so every rank runs the same number of steps (uneven
    step counts hang DDP) and every sample counts exactly once per epoch.

    `by_group` (a plan with query groups, for ranking losses) batches whole groups instead: the
    groups in a seeded permutation, rank r taking every world-th, each batch holding
    `groups_per_batch` of them (about `batch_size` rows: batch_size / mean group size), so a
    group's candidates always meet in one batch; `TeacherBatch.groups` numbers them. A rank
    with a group fewer pads with a weight-0 copy of one.
    """

    def __init__(self, aligned: AlignedCache, batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, buffer_shards: int = 2, rank: int = 0, world: int = 1,
                 group_by_length: bool = False, by_group: bool = False):
        self.aligned, self.batch_size = aligned, batch_size
        self.pairs = aligned.plan.pairs
        self.groups = self._read_groups() if by_group else None
        self.group_by_length = group_by_length
        self._lengths: dict[int, np.ndarray] = {}
        self.seed, self.shuffle, self.buffer_shards = seed, shuffle, buffer_shards
        self.rank, self.world = rank, world

    def _read_groups(self) -> list[np.ndarray]:
        """The plan's query groups, each a [n, 2] array of (shard, row), in first-seen order."""
        members: dict[str, list] = {}
        for s in range(len(self.aligned)):
            column = self.aligned.cache.read_text_shard(self.aligned.plan, s).column("group")
            for row, key in enumerate(column.to_pylist()):
                members.setdefault(key, []).append((s, row))
        return [np.array(rows, dtype=np.int64) for rows in members.values()]

    @property
    def groups_per_batch(self) -> int:
        mean_size = self.aligned.rows / len(self.groups)
        return max(1, round(self.batch_size / mean_size))

    def rows_per_rank(self) -> int:
        return -(-self.aligned.rows // self.world)

    def batches_per_epoch(self) -> int:
        if self.groups is not None:
            per_rank = -(-len(self.groups) // self.world)
            return -(-per_rank // self.groups_per_batch)
        return -(-self.rows_per_rank() // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """[N, 2] (shard, row) pairs of the whole epoch, before the split across ranks."""
        sizes = self.aligned.shard_rows()
        rng = np.random.default_rng([self.seed, epoch])
        shards = rng.permutation(len(sizes)) if self.shuffle else np.arange(len(sizes))
        parts = []
        for start in range(0, len(shards), self.buffer_shards):
            window = np.concatenate([np.stack([np.full(sizes[s], s), np.arange(sizes[s])], 1)
                                     for s in shards[start:start + self.buffer_shards]])
            window = window[rng.permutation(len(window))] if self.shuffle else window
            parts.append(self._group(window, rng) if self.group_by_length else window)
        return np.concatenate(parts)

    def _group(self, window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sort mega-batches of the window by text length, then shuffle its step-sized chunks
        (the ragged tail stays last so that every other step is full on every rank)."""
        step = self.batch_size * self.world
        lengths = np.empty(len(window), dtype=np.int64)
        for s in np.unique(window[:, 0]):
            mask = window[:, 0] == s
            lengths[mask] = self.text_lengths(int(s))[window[mask, 1]]
        mega = step * GROUP_FACTOR
        for start in range(0, len(window), mega):
            part = slice(start, start + mega)
            window[part] = window[part][np.argsort(lengths[part], kind="stable")]
        full = len(window) // step
        chunks = rng.permutation(full) if self.shuffle else np.arange(full)
        order = (chunks[:, None] * step + np.arange(step)).ravel()
        return np.concatenate([window[order], window[full * step:]])

    def text_lengths(self, shard: int) -> np.ndarray:
        """Characters per row of a plan text shard (a cheap proxy for tokens; both texts of a
        pair), read once."""
        if shard not in self._lengths:
            table = self.aligned.cache.read_text_shard(self.aligned.plan, shard)
            lengths = pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False)
            if self.pairs:
                lengths = lengths + pc.utf8_length(table.column("pair")).to_numpy(zero_copy_only=False)
            self._lengths[shard] = lengths
        return self._lengths[shard]

    def rank_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        mine = self.order(epoch)[self.rank::self.world]
        weights = np.ones(self.rows_per_rank(), dtype=np.float32)
        if len(mine) < self.rows_per_rank():
            weights[len(mine):] = 0.0
            mine = np.concatenate([mine, mine[: self.rows_per_rank() - len(mine)]])
        return mine, weights

    def rank_batches(self, epoch: int, start_batch: int = 0) -> Iterator[tuple]:
        """(rows [n, 2], weights [n], group number per row or None) of this rank's batches."""
        if self.groups is not None:
            yield from self._group_batches(epoch, start_batch)
            return
        order, weights = self.rank_order(epoch)
        for b in range(start_batch, self.batches_per_epoch()):
            part = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield order[part], weights[part], None

    def _group_batches(self, epoch: int, start_batch: int) -> Iterator[tuple]:
        rng = np.random.default_rng([self.seed, epoch])
        picks = rng.permutation(len(self.groups)) if self.shuffle else np.arange(len(self.groups))
        mine = picks[self.rank::self.world].tolist()
        per_rank = -(-len(self.groups) // self.world)
        padded = [(g, 1.0) for g in mine] + [(picks[0], 0.0)] * (per_rank - len(mine))
        size = self.groups_per_batch
        for b in range(start_batch, self.batches_per_epoch()):
            chosen = padded[b * size:(b + 1) * size]
            rows = [self.groups[g] for g, _ in chosen]
            yield (np.concatenate(rows),
                   np.concatenate([np.full(len(r), w, dtype=np.float32) for r, (_, w) in zip(rows, chosen)]),
                   np.repeat(np.arange(len(rows)), [len(r) for r in rows]))

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator:
        """Batches of `epoch` from batch `start_batch` on (resume without reading what is skipped)."""
        open_shards: dict[int, AlignedShard] = {}
        for rows, weights, groups in self.rank_batches(epoch, start_batch):
            needed = set(rows[:, 0].tolist())
            for s in list(open_shards):
                if s not in needed:
                    del open_shards[s]
            for s in needed - open_shards.keys():
                open_shards[s] = self.aligned.read(s)
            yield self._batch(rows, weights, groups, open_shards)

    def _batch(self, rows: np.ndarray, weights: np.ndarray, groups: np.ndarray | None,
               shards: dict[int, AlignedShard]):
        texts, pairs, ids = [], [], []
        per_teacher: list[list[dict]] = [[] for _ in self.aligned.manifests]
        for s in np.unique(rows[:, 0]):
            picks = np.flatnonzero(rows[:, 0] == s)
            take = rows[picks, 1]
            shard = shards[int(s)]
            texts.append((picks, shard.text.column("text").take(take).to_pylist()))
            if self.pairs:
                pairs.append((picks, shard.text.column("pair").take(take).to_pylist()))
            ids.append((picks, shard.text.column("sample_id").take(take).to_numpy()))
            for k, table in enumerate(shard.teachers):
                per_teacher[k].append((picks, table.take(take)))
        return self._make_batch(scatter_list(texts, len(rows)), scatter_array(ids, len(rows)),
                                per_teacher, torch.from_numpy(weights.copy()),
                                scatter_list(pairs, len(rows)) if self.pairs else None,
                                None if groups is None else torch.from_numpy(groups))

    @abstractmethod
    def _make_batch(self, texts: list[str], sample_ids: np.ndarray, per_teacher: list[list],
                    weights: torch.Tensor, pairs: list[str] | None, groups: torch.Tensor | None):
        """The kind's batch. `per_teacher[k]` holds (batch positions, gathered rows of teacher
        k's table) parts; `pairs` each text's second text (pair corpora); `groups` [B] the query
        group of each row numbered within the batch (batches of whole groups)."""

def scatter_array(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    out = np.empty((n, *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
    for picks, values in parts:
        out[picks] = values
    return out


def scatter_list(parts: list[tuple[np.ndarray, list]], n: int) -> list:
    out: list = [None] * n
    for picks, values in parts:
        for i, v in zip(picks, values):
            out[i] = v
    return out


def prefetch(batches: Iterator, depth: int = 2) -> Iterator:
    """Produce the next `depth` items in a background thread (Arrow gathers release the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    errors: list[BaseException] = []
    stop = threading.Event()

    def work():
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as e:  # handed to the consumer, raised there
            errors.append(e)
        finally:
            q.put(done)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            yield item
        if errors:
            raise errors[0]
    finally:
        # A consumer that stops early (max_steps, an error) must not leave the worker blocked on
        # a full queue or still building batches in Arrow while the interpreter shuts down.
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
