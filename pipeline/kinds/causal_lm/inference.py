"""Run a causal-LM teacher over one shard of texts and keep sparse next-token targets.

Per token the teacher's next-token distribution (at the recorded temperature) is kept either as
its top-k ids and log-probs plus the log of the mass outside them (`top-k`), or as N draws from
it stored as unique ids with counts (`sampled`: counts / N is an unbiased estimate of the whole
distribution, so the distillation gradient built from it is unbiased too). Each token also keeps
the teacher's log-probability of the token that actually follows, so perplexities can be
compared later without the teacher.

The vocabulary-wide work runs on chunks of positions: the decoder body runs once per batch, then
the output head, logsumexp, top-k and sampling see at most `chunk_positions(V)` positions at a
time (about `CHUNK_ELEMENTS` logits: 64 positions at a 262,144-token vocabulary), cutting long
rows into pieces, so no [batch, length, vocab] logit or log-softmax tensor is ever built (at
batch 8 x 512 and 262k ids it would be 4 GiB). This assumes the head is the output embedding,
optionally soft-capped (`final_logit_softcapping`, Gemma 2); models that post-process logits
otherwise would need their own head here.

Padded heads (more rows than the tokenizer has ids): the padded rows' logits are cut off before
anything is normalised, so stored log-probabilities, tails and draws are over real tokens only;
the mass the full softmax put on them is returned per token (`padded_mass`) to be reported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distill.pipeline.config import CausalLMTeacherConfig
from distill.pipeline.inference import autocast, encode_longest_first, pick_device
from distill.pipeline.kinds.causal_lm.vocab import padded_rows, tokenizer_size

CHUNK_ELEMENTS = 2 ** 24  # logits per head chunk: 64 MiB of float32


def chunk_positions(vocab: int) -> int:
    """Positions per head chunk: peak memory stays near 2 x CHUNK_ELEMENTS floats at any
    vocabulary size (the logits and one temporary of the same shape)."""
    return max(1, CHUNK_ELEMENTS // vocab)


@dataclass
class LMShardOutput:
    """Per-row token ids and per-token targets for one shard, rows in plan order.

    Token arrays are flat over the rows' tokens in order (`lengths[r]` tokens for row r).
    top-k: `topk_ids`/`topk_logprobs` [tokens, k] and `tail_logmass` [tokens];
    sampled: `draw_ids`/`draw_counts` flat over unique draws, `draw_lengths` [tokens] of them.
    `next_logprob` [tokens]: log p(the following token), 0 at each row's last token.
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray
    next_logprob: np.ndarray
    topk_ids: np.ndarray | None = None
    topk_logprobs: np.ndarray | None = None
    tail_logmass: np.ndarray | None = None
    draw_ids: np.ndarray | None = None
    draw_counts: np.ndarray | None = None
    draw_lengths: np.ndarray | None = None
    finite: np.ndarray | None = None     # [tokens] bool: the teacher's distribution was finite
    padded_mass: np.ndarray | None = None  # [tokens] probability on padded head rows (0 if none)

    def finite_rows(self) -> np.ndarray:
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        return np.logical_and.reduceat(self.finite, starts) if len(self.finite) else \
            np.ones(len(self.lengths), dtype=bool)


def load_causal_lm(model_dir: Path, device: torch.device, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trusted = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(model_dir, **trusted)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # left padding would shift the positions of real tokens
    model = AutoModelForCausalLM.from_pretrained(model_dir, **trusted).to(device).eval()
    return model, tokenizer


class CausalLMInference:
    """One loaded causal LM; `run` is thread-safe (shard tasks of one teacher share it)."""

    def __init__(self, config: CausalLMTeacherConfig, model_dir: Path):
        self.config = config
        self.device = pick_device(config.device)
        self.model, self.tokenizer = load_causal_lm(model_dir, self.device, config.trust_remote_code)
        self.body = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.vocab_size = tokenizer_size(self.tokenizer)
        self.padded = padded_rows(self.head.weight.shape[0], self.vocab_size,
                                  f"teachers[{config.name}] ({config.model})")
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self._lock = threading.Lock()

    def run(self, texts: list[str], seed: int = 0,
            on_rows: Callable[[int], None] | None = None) -> LMShardOutput:
        with self._lock:
            return self._run(texts, seed, on_rows)

    def _run(self, texts, seed, on_rows) -> LMShardOutput:
        cfg = self.config
        encoded, truncated, lengths, order = encode_longest_first(self.tokenizer, texts, cfg.max_length)
        rows: list[dict | None] = [None] * len(texts)
        for start in range(0, len(texts), cfg.batch_size):
            picked = order[start:start + cfg.batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded["input_ids"][i] for i in picked]},
                                       return_tensors="pt").to(self.device)
            for row, result in zip(picked, self._forward(batch, [seed * 1_000_003 + int(i) for i in picked])):
                rows[row] = result
            if on_rows:
                on_rows(len(picked))
        return self._assemble(rows, lengths, truncated)

    @torch.inference_mode()
    def _forward(self, batch, row_seeds: list[int]) -> list[dict]:
        """Per row of the batch, its targets. Rows are cut into pieces of at most
        `chunk_positions` tokens and the pieces grouped into head chunks of at most that many."""
        with autocast(self.device, self.config.dtype):
            hidden = self.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).last_hidden_state
        input_ids = batch["input_ids"]
        lengths = batch["attention_mask"].sum(1).tolist()
        size = chunk_positions(self.vocab_size + self.padded)
        pieces = [(r, a, min(a + size, n)) for r, n in enumerate(lengths) for a in range(0, n, size)]
        parts, group = [], []
        for piece in pieces:
            if group and sum(b - a for _, a, b in group) + piece[2] - piece[1] > size:
                parts += self._targets(hidden, input_ids, group, row_seeds, size)
                group = []
            group.append(piece)
        parts += self._targets(hidden, input_ids, group, row_seeds, size)
        rows = []
        for r, n in enumerate(lengths):
            mine = [part for (row, _, _), part in zip(pieces, parts) if row == r]
            row = {name: torch.cat([part[name] for part in mine]) for name in mine[0]}
            row["next_logprob"][-1] = 0.0
            row["input_ids"] = input_ids[r, :n]
            rows.append({name: value.cpu().numpy() for name, value in row.items()})
        return rows

    def _targets(self, hidden, input_ids, group: list[tuple[int, int, int]], seeds, size) -> list[dict]:
        """Targets of each piece (row r, positions a..b) of one head chunk."""
        lm = self.config.lm
        states = torch.cat([hidden[r, a:b] for r, a, b in group])
        following = torch.cat([torch.cat([input_ids[r, a + 1:b + 1], input_ids.new_zeros(1)])[:b - a]
                               for r, a, b in group])
        with autocast(self.device, self.config.dtype):
            logits = self.head(states).float()                       # [tokens, rows] for this chunk
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        log_z = logits[:, :self.vocab_size].logsumexp(-1)
        if self.padded:
            padded_logz = logits[:, self.vocab_size:].logsumexp(-1)
            padded_mass = torch.exp(padded_logz - torch.logaddexp(log_z, padded_logz))
            logits = logits[:, :self.vocab_size]
        else:
            padded_mass = torch.zeros_like(log_z)
        next_logprob = logits.gather(-1, following[:, None])[:, 0] - log_z
        scaled = logits / lm.temperature if lm.temperature != 1.0 else logits
        log_z_t = scaled.logsumexp(-1) if lm.temperature != 1.0 else log_z
        finite = torch.isfinite(log_z_t)
        if lm.mode == "top-k":
            values, ids = scaled.topk(lm.k, dim=-1)
            tail = scaled.scatter_(-1, ids, float("-inf")).logsumexp(-1) - log_z_t  # logits are spent
            parts = {"topk_ids": ids, "topk_logprobs": values - log_z_t[:, None], "tail_logmass": tail}
        else:
            probs = scaled.sub_(log_z_t[:, None]).exp_()                            # in place, as above
            probs[~finite] = 1.0
            parts = {"draws": self._draw(probs, group, seeds, size)}
        parts.update(finite=finite, next_logprob=next_logprob, padded_mass=padded_mass)
        out, start = [], 0
        for _, a, b in group:
            out.append({name: value[start:start + b - a] for name, value in parts.items()})
            start += b - a
        return out

    def _draw(self, probs: torch.Tensor, group, seeds, size) -> torch.Tensor:
        """[tokens, N] draws; each piece from its own generator seeded by (shard seed, row,
        piece index), so a row's draws do not depend on the batch it happened to land in (a
        row's first piece uses the row's seed itself)."""
        generator = torch.Generator(device=probs.device)
        draws, start = [], 0
        for r, a, b in group:
            piece = a // size
            generator.manual_seed(seeds[r] if piece == 0 else (seeds[r] * 1_000_003 + piece) % 2 ** 63)
            draws.append(torch.multinomial(probs[start:start + b - a], self.config.lm.samples,
                                           replacement=True, generator=generator))
            start += b - a
        return torch.cat(draws)

    def _assemble(self, rows: list[dict], lengths: np.ndarray, truncated: np.ndarray) -> LMShardOutput:
        def cat(name):
            return np.concatenate([row[name] for row in rows])

        fields = {"input_ids": cat("input_ids"), "lengths": lengths, "truncated": truncated,
                  "next_logprob": cat("next_logprob"), "finite": cat("finite"),
                  "padded_mass": cat("padded_mass")}
        if self.config.lm.mode == "top-k":
            fields.update(topk_ids=cat("topk_ids"), topk_logprobs=cat("topk_logprobs"),
                          tail_logmass=cat("tail_logmass"))
        else:
            fields.update(zip(("draw_ids", "draw_counts", "draw_lengths"), unique_counts(cat("draws"))))
        return LMShardOutput(**fields)


def unique_counts(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[tokens, N] draws -> (unique ids flat, their counts, unique ids per token), ids ascending
    within each token."""
    ordered = np.sort(draws, axis=1)
    new = np.ones_like(ordered, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, ordered.size))
    return ordered[new], counts, new.sum(1)
