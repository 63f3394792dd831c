"""Prompt modules of CDL-Prompt (arXiv 2407.13911 v1, docs/continual.md).

`PromptPool` is the L2P pool: M learned keys and M prompts of L vectors; an input's frozen query
picks the top-k keys by cosine similarity and its prompts are the k selected prompts, joined.
The key-query matching loss pulls the selected keys towards the queries that chose them, so
the keys become a map from input region to prompt (L2P's "surrogate loss"; its pull-constraint
coefficient is `continual.match_weight`).

`PromptMapping` is CDL-Prompt's attention-based mapping of a teacher prompt into the student,
built like a CODA-Prompt module: for the teacher's length-averaged prompt vector v
(`prompt_vector`: the mean of the prompts it selected for the input), alpha_n = cos(v * A_n, K_n)
and the student prompt is sum_n alpha_n P_n. `MappedPrompts` holds one mapping per prompt-based
teacher: a teacher is one of our own prompt-mode students (pipeline/kinds/prompt/teacher.py caches its
vectors beside its logits), and each teacher's pool is its own coordinate system, so vectors of
two teachers are never averaged. Plain Hugging Face teachers have no prompts: logits only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Selection:
    indices: torch.Tensor       # [B, k] selected prompts, most similar first
    similarity: torch.Tensor    # [B, M] cosine(query, key)
    match_loss: torch.Tensor    # scalar: batch mean of sum over selected of (1 - cosine)


class PromptPool(nn.Module):
    """L2P prompt pool: `size` keys in query space and `size` prompts of `length` x `dim`."""

    def __init__(self, size: int, length: int, top_k: int, dim: int, key_dim: int):
        super().__init__()
        if not 1 <= top_k <= size:
            raise ValueError(f"top_k must be between 1 and the pool size {size}, got {top_k}")
        self.top_k = top_k
        # L2P's default initialiser: uniform in [-1, 1] for keys and prompts.
        self.keys = nn.Parameter(torch.empty(size, key_dim).uniform_(-1, 1))
        self.prompts = nn.Parameter(torch.empty(size, length, dim).uniform_(-1, 1))

    def select(self, query: torch.Tensor) -> Selection:
        """Top-k keys by cosine with the (detached: the query encoder is frozen) query [B, D_q]."""
        similarity = F.normalize(query.detach(), dim=-1) @ F.normalize(self.keys, dim=-1).T
        picked = similarity.topk(self.top_k, dim=-1)
        match = (1.0 - picked.values).sum(-1).mean()
        return Selection(picked.indices, similarity, match)

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected prompts joined along the sequence, [B, k * length, dim], and the matching loss."""
        chosen = self.select(query)
        prompts = self.prompts[chosen.indices]                      # [B, k, L, D]
        return prompts.flatten(1, 2), chosen.match_loss


class PromptMapping(nn.Module):
    """Teacher prompt vector [B, D_t] -> `length` student prompt vectors [B, length, D_s]."""

    def __init__(self, teacher_dim: int, student_dim: int, components: int = 100, length: int = 8):
        super().__init__()
        self.keys = nn.Parameter(torch.empty(components, teacher_dim).uniform_(-1, 1))
        self.attention = nn.Parameter(torch.empty(components, teacher_dim).uniform_(-1, 1))
        self.prompts = nn.Parameter(torch.empty(components, length, student_dim).uniform_(-1, 1))

    def weights(self, teacher_prompt: torch.Tensor) -> torch.Tensor:
        """alpha [B, N]: cos(v * A_n, K_n) for every component n."""
        attended = teacher_prompt[:, None, :] * self.attention[None]       # [B, N, D_t]
        return F.cosine_similarity(attended, self.keys[None], dim=-1)

    def forward(self, teacher_prompt: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bn,nld->bld", self.weights(teacher_prompt), self.prompts)


def prompt_vector(prompts: torch.Tensor) -> torch.Tensor:
    """CDL v1's teacher prompt v: the selected prompts [B, P, D] averaged over their P positions."""
    return prompts.mean(1)


class MappedPrompts(nn.Module):
    """One `PromptMapping` per prompt-based teacher, in `teachers` order. The input is the
    teachers' prompt vectors side by side, [B, sum of widths]; a teacher whose row is missing
    (NaN: skipped by the cache, or not in it) contributes prompts masked out of attention."""

    def __init__(self, teachers: list[str], widths: list[int], student_dim: int,
                 components: int, length: int):
        super().__init__()
        self.teachers, self.widths = list(teachers), list(widths)
        self.maps = nn.ModuleList(PromptMapping(w, student_dim, components, length) for w in widths)

    @property
    def slots(self) -> int:
        """Input positions the mapped prompts take."""
        return sum(m.prompts.shape[1] for m in self.maps)

    def forward(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mapped prompts [B, slots, D_s], mask [B, slots]: False where the teacher had no vector)."""
        if vectors.shape[-1] != sum(self.widths):
            expected = ", ".join(f"{t} {w}" for t, w in zip(self.teachers, self.widths))
            raise ValueError(f"teacher prompt vectors of width {vectors.shape[-1]} given; this student "
                             f"maps the vectors of teachers of widths {expected}, side by side")
        prompts, masks = [], []
        for mapping, v in zip(self.maps, vectors.split(self.widths, dim=-1)):
            present = torch.isfinite(v).all(-1)
            prompts.append(mapping(v.nan_to_num(0.0)))
            masks.append(present[:, None].expand(-1, mapping.prompts.shape[1]))
        return torch.cat(prompts, 1), torch.cat(masks, 1)
