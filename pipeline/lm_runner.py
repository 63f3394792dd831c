"""Run a causal-LM teacher over one shard of texts and keep sparse next-token targets.

Per token the teacher's next-token distribution (at the recorded temperature) is kept either as
its top-k ids and log-probs plus the log of the mass outside them (`top-k`), or as N draws from
it stored as unique ids with counts (`sampled`: counts / N is an unbiased estimate of the whole
distribution, so the distillation gradient built from it is unbiased too). Each token also keeps
the teacher's log-probability of the token that actually follows, so perplexities can be
compared later without the teacher.

The vocabulary-wide work runs on chunks of positions: the decoder body runs once per batch, then
the output head, logsumexp, top-k and sampling see at most `CHUNK_TOKENS` positions at a time,
so no [batch, length, vocab] logit or log-softmax tensor is ever built (with 150k-token
vocabularies and long texts it would not fit). This assumes the head is the plain output
embedding (true for Llama, Mistral, Qwen, GPT-2, ...); models that post-process logits (soft
caps, scales) would need their own head here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distill.pipeline.config import TeacherConfig
from distill.pipeline.runner import autocast, encode_longest_first, pick_device

CHUNK_TOKENS = 256


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


class CausalLMRunner:
    """One loaded causal LM; `run` is thread-safe (shard tasks of one teacher share it)."""

    def __init__(self, config: TeacherConfig, model_dir: Path):
        self.config = config
        self.device = pick_device(config.device)
        self.model, self.tokenizer = load_causal_lm(model_dir, self.device, config.trust_remote_code)
        self.body = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.vocab_size = self.head.weight.shape[0]
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
        """Per row of the batch, its targets; rows are processed in groups of at most
        CHUNK_TOKENS tokens (a single longer row is its own group)."""
        with autocast(self.device, self.config.dtype):
            hidden = self.body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).last_hidden_state
        lengths = batch["attention_mask"].sum(1).tolist()
        results, group = [], []
        for r, n in enumerate(lengths):
            if group and sum(lengths[g] for g in group) + n > CHUNK_TOKENS:
                results += self._targets(hidden, batch["input_ids"], group, lengths, row_seeds)
                group = []
            group.append(r)
        return results + self._targets(hidden, batch["input_ids"], group, lengths, row_seeds)

    def _targets(self, hidden, input_ids, group: list[int], lengths: list[int], seeds) -> list[dict]:
        lm = self.config.lm
        states = torch.cat([hidden[r, :lengths[r]] for r in group])
        with autocast(self.device, self.config.dtype):
            logits = self.head(states).float()                       # [tokens, V] for this group
        following = torch.cat([torch.cat([input_ids[r, 1:lengths[r]], input_ids.new_zeros(1)])
                               for r in group])
        log_z = logits.logsumexp(-1)
        next_logprob = logits.gather(-1, following[:, None])[:, 0] - log_z
        scaled = logits / lm.temperature if lm.temperature != 1.0 else logits
        log_z_t = scaled.logsumexp(-1) if lm.temperature != 1.0 else log_z
        finite = torch.isfinite(log_z_t)
        if lm.mode == "top-k":
            values, ids = scaled.topk(lm.k, dim=-1)
            tail = scaled.scatter(-1, ids, float("-inf")).logsumexp(-1) - log_z_t
            parts = {"topk_ids": ids, "topk_logprobs": values - log_z_t[:, None], "tail_logmass": tail}
        else:
            probs = torch.where(finite[:, None], torch.exp(scaled - log_z_t[:, None]), 1.0)
            parts = {"draws": self._draw(probs, group, lengths, seeds)}
        out, start = [], 0
        for r in group:
            end = start + lengths[r]
            row = {name: value[start:end] for name, value in parts.items()}
            row.update(input_ids=input_ids[r, :lengths[r]], finite=finite[start:end],
                       next_logprob=torch.cat([next_logprob[start:end - 1], next_logprob.new_zeros(1)]))
            out.append({name: value.cpu().numpy() for name, value in row.items()})
            start = end
        return out

    def _draw(self, probs: torch.Tensor, group, lengths, seeds) -> torch.Tensor:
        """[tokens, N] draws; each row from its own generator seeded by (shard seed, row), so a
        row's draws do not depend on the batch it happened to land in."""
        generator = torch.Generator(device=probs.device)
        draws, start = [], 0
        for r in group:
            generator.manual_seed(seeds[r])
            draws.append(torch.multinomial(probs[start:start + lengths[r]], self.config.lm.samples,
                                           replacement=True, generator=generator))
            start += lengths[r]
        return torch.cat(draws)

    def _assemble(self, rows: list[dict], lengths: np.ndarray, truncated: np.ndarray) -> LMShardOutput:
        def cat(name):
            return np.concatenate([row[name] for row in rows])

        fields = {"input_ids": cat("input_ids"), "lengths": lengths, "truncated": truncated,
                  "next_logprob": cat("next_logprob"), "finite": cat("finite")}
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
