"""Stream aligned causal-LM teacher caches as token-level training batches.

`TokenStream` is a `CacheStream`: the same epoch order, resume and rank split; only what a batch
holds differs. The student trains on the teachers' own token ids (cached with their targets),
so nothing is tokenized twice; teachers must agree on those ids row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch

from distill.pipeline.kinds.causal_lm.targets import SparseTargets
from distill.pipeline.stream import CacheStream
from distill.storage.columns import to_matrix, unnest
from distill.storage.lm_tokens import decode_logprobs
from distill.storage.records import CacheError, TeacherManifest


@dataclass
class Packed:
    """A batch's texts packed into blocks: `input_ids`/`position_ids` [P, W], positions restarting
    at 0 for every text (and for the padding closing a block, so it forms a text of its own),
    and `index` [N], where each real token of the unpacked batch lies in the flattened blocks
    (the batch's token order, so every token-level tensor stays as it is)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor

    @property
    def padding(self) -> float:
        return 1 - len(self.index) / self.input_ids.numel()

    def to(self, device) -> "Packed":
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.index.to(device))


def pack_rows(ids: np.ndarray, lengths: np.ndarray, block: int) -> Packed:
    """First-fit decreasing: longest texts first, each into the first block it still fits in (a
    text longer than `block` gets a block of its own); blocks are as wide as the fullest."""
    fill: list[int] = []
    where = np.zeros(len(lengths), dtype=np.int64)       # block of each text
    offset = np.zeros(len(lengths), dtype=np.int64)      # its first position there
    for r in np.argsort(-lengths, kind="stable"):
        n = int(lengths[r])
        b = next((b for b, used in enumerate(fill) if used + n <= block), len(fill))
        if b == len(fill):
            fill.append(0)
        where[r], offset[r] = b, fill[b]
        fill[b] += n
    width = max(fill, default=1)
    starts = np.cumsum(lengths) - lengths
    inside = np.arange(len(ids)) - np.repeat(starts, lengths)            # position within its text
    flat = np.repeat(where * width + offset, lengths) + inside
    packed = np.zeros(len(fill) * width, dtype=np.int64)
    positions = np.arange(len(fill) * width) % width
    tail_start = np.repeat(np.array(fill), width)                        # padding: its own text
    positions = np.where(positions >= tail_start, positions - tail_start, positions)
    positions[flat] = inside
    packed[flat] = ids
    shape = (len(fill), width)
    return Packed(torch.from_numpy(packed.reshape(shape)), torch.from_numpy(positions.reshape(shape)),
                  torch.from_numpy(flat))


@dataclass
class TokenBatch:
    """B texts padded to their longest; token-level tensors run over the N real tokens in row
    order (the positions `input_ids[attention_mask.bool()]` picks)."""

    sample_ids: np.ndarray
    input_ids: torch.Tensor          # [B, L] long, 0 on padding
    attention_mask: torch.Tensor     # [B, L] long
    teachers: list[SparseTargets]    # per teacher, [N] positions
    next_logprob: torch.Tensor       # [N, K] each teacher's log p(following token)
    has_next: torch.Tensor           # [N] bool, False at each text's last token
    weights: torch.Tensor            # [B] 1, or 0 for rows that only pad a rank's last batch
    packed: Packed | None = None     # train.pack: the same texts in blocks, for the student

    @property
    def token_weights(self) -> torch.Tensor:
        return self.weights.repeat_interleave(self.attention_mask.sum(1))

    @property
    def next_ids(self) -> torch.Tensor:
        """[N] the token that follows each position (0 where none does: see `has_next`)."""
        real = self.input_ids[self.attention_mask.bool()]
        return torch.where(self.has_next, torch.roll(real, -1), 0)

    def to(self, device) -> "TokenBatch":
        return replace(self, input_ids=self.input_ids.to(device),
                       attention_mask=self.attention_mask.to(device),
                       teachers=[t.to(device) for t in self.teachers],
                       next_logprob=self.next_logprob.to(device), has_next=self.has_next.to(device),
                       weights=self.weights.to(device),
                       packed=self.packed.to(device) if self.packed is not None else None)


class TokenStream(CacheStream):
    """`pack`: the block length (tokens) to pack each batch's texts into, or None."""

    def __init__(self, aligned, batch_size: int, pack: int | None = None, **options):
        super().__init__(aligned, batch_size, **options)
        self.pack = pack

    def _make_batch(self, texts, sample_ids, per_teacher, weights, pairs, groups) -> TokenBatch:
        tables = [_in_batch_order(parts) for parts in per_teacher]
        ids, lengths = unnest(tables[0].column("input_ids"))
        ids = ids.to_numpy(zero_copy_only=False).astype(np.int64)
        for manifest, table in zip(self.aligned.manifests[1:], tables[1:]):
            if not np.array_equal(unnest(table.column("input_ids"))[0].to_numpy(zero_copy_only=False), ids):
                first = self.aligned.manifests[0]
                raise CacheError(f"teachers '{first.name}' and '{manifest.name}' cached different "
                                 "token ids for the same texts; give them the same tokenizer and "
                                 "max_length, and re-run `distill cache`")
        width = int(lengths.max())
        mask = np.arange(width)[None, :] < lengths[:, None]
        padded = np.zeros(mask.shape, dtype=np.int64)
        padded[mask] = ids
        has_next = np.ones(len(ids), dtype=bool)
        has_next[np.cumsum(lengths) - 1] = False
        targets = [_targets(table, m, lengths) for table, m in zip(tables, self.aligned.manifests)]
        return TokenBatch(sample_ids=sample_ids, input_ids=torch.from_numpy(padded),
                          attention_mask=torch.from_numpy(mask.astype(np.int64)),
                          teachers=[t for t, _ in targets],
                          next_logprob=torch.stack([n for _, n in targets], 1),
                          has_next=torch.from_numpy(has_next), weights=weights,
                          packed=pack_rows(ids, lengths, self.pack) if self.pack else None)


def _in_batch_order(parts: list[tuple[np.ndarray, pa.Table]]) -> pa.Table:
    positions = np.concatenate([picks for picks, _ in parts])
    table = pa.concat_tables([t.replace_schema_metadata(None) for _, t in parts])
    return table.take(np.argsort(positions))


def _spread(values: np.ndarray, token_valid: np.ndarray, fill) -> np.ndarray:
    """Values of the valid tokens -> an array over all tokens, `fill` at the others."""
    out = np.full((len(token_valid), *values.shape[1:]), fill, dtype=values.dtype)
    out[token_valid] = values
    return out


def _targets(table: pa.Table, manifest: TeacherManifest, lengths: np.ndarray):
    """(SparseTargets, next_logprob [N]) of one teacher over the batch's tokens."""
    lm, vocab = manifest.settings["lm"], manifest.settings["vocab_size"]
    row_valid = table.column("next_logprob").is_valid().to_numpy(zero_copy_only=False)
    token_valid = np.repeat(row_valid, lengths)
    if lm["mode"] == "top-k":
        ids = to_matrix(unnest(table.column("topk_ids"))[0]).astype(np.int64)
        probs = np.exp(decode_logprobs(to_matrix(unnest(table.column("topk_logprob_codes"))[0])))
        tail = np.exp(unnest(table.column("tail_logmass"))[0].to_numpy(zero_copy_only=False)
                      .astype(np.float32))
        # 8-bit codes are off by up to 3 % each: rescale so listed + tail sum to 1 again (the
        # float16 tail is the more precise part), which keeps every gradient centred.
        probs *= ((1 - tail) / probs.sum(1).clip(1e-12))[:, None]
    else:
        ids, probs = _draws(table, lm["samples"])
        tail = np.zeros(len(ids), dtype=np.float32)
    next_logprob = unnest(table.column("next_logprob"))[0].to_numpy(zero_copy_only=False)
    targets = SparseTargets(ids=torch.from_numpy(_spread(ids, token_valid, -1)),
                            probs=torch.from_numpy(_spread(probs, token_valid, 0.0)),
                            tail=torch.from_numpy(_spread(tail, token_valid, 0.0)),
                            valid=torch.from_numpy(token_valid), vocab=vocab)
    return targets, torch.from_numpy(_spread(next_logprob.astype(np.float32), token_valid, 0.0))


def _draws(table: pa.Table, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique drawn ids and count / samples per valid token, padded to the widest token."""
    per_token, _ = unnest(table.column("draw_ids"))
    flat_ids, widths = unnest(per_token)
    flat_counts, _ = unnest(unnest(table.column("draw_counts"))[0])
    rows = np.repeat(np.arange(len(widths)), widths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(widths) - widths, widths)
    ids = np.full((len(widths), max(int(widths.max(initial=0)), 1)), -1, dtype=np.int64)
    probs = np.zeros(ids.shape, dtype=np.float32)
    ids[rows, cols] = flat_ids.to_numpy(zero_copy_only=False)
    probs[rows, cols] = flat_counts.to_numpy(zero_copy_only=False) / samples
    return ids, probs
