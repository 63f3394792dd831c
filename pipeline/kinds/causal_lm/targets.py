"""Token-level teacher targets as sparse distributions: listed ids with their probabilities plus
the mass outside them (a "tail bucket"), and how several teachers line up on one support.

Both cache modes fit this one form. Top-k lists k ids and keeps the rest of the mass as the
tail; sampled lists the drawn ids with probability count / N and an empty tail (in expectation
the draws carry all the mass). Methods and losses only see this form, so they work for either
mode and for mixtures of both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class SparseTargets:
    """One teacher's next-token distributions at N token positions.

    ids:   [N, S] long, listed token ids; -1 pads rows that list fewer than S.
    probs: [N, S] float, their probabilities (0 on pads).
    tail:  [N] float, the probability outside the listed ids (0 for sampled targets).
    valid: [N] bool, False where the teacher has no target (a skipped, non-finite row).
    vocab: the vocabulary size V.
    """

    ids: torch.Tensor
    probs: torch.Tensor
    tail: torch.Tensor
    valid: torch.Tensor
    vocab: int

    @property
    def listed(self) -> torch.Tensor:
        return self.ids >= 0

    def to(self, device) -> "SparseTargets":
        return replace(self, ids=self.ids.to(device), probs=self.probs.to(device),
                       tail=self.tail.to(device), valid=self.valid.to(device))

    def at(self, query: torch.Tensor) -> torch.Tensor:
        """[N, U] this teacher's probability of each queried id (-1: a pad, gets 0): the listed
        probability, else its tail spread evenly over the ids it does not list (the
        reconstruction a top-k list allows; 0 for sampled targets)."""
        sentinel = self.vocab
        keys, order = torch.where(self.listed, self.ids, sentinel).sort(-1)
        values = self.probs.gather(-1, order)
        pos = torch.searchsorted(keys, query.clamp_min(0)).clamp_max(keys.shape[-1] - 1)
        hit = (keys.gather(-1, pos) == query) & (query >= 0)
        unlisted = (self.vocab - self.listed.sum(-1)).clamp_min(1)
        spread = (self.tail / unlisted)[:, None].expand_as(query)
        return torch.where(hit, values.gather(-1, pos), torch.where(query >= 0, spread, 0.0))


def union_ids(targets: list[SparseTargets]) -> torch.Tensor:
    """[N, U] the union of the teachers' listed ids per position, ascending, -1 pads."""
    vocab = targets[0].vocab
    ids = torch.cat([torch.where(t.listed & t.valid[:, None], t.ids, vocab) for t in targets], -1)
    ids, _ = ids.sort(-1)
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    ids, _ = torch.where(repeat, vocab, ids).sort(-1)
    width = max(int((ids < vocab).sum(-1).max()) if len(ids) else 0, 1)
    ids = ids[:, :width]
    return torch.where(ids < vocab, ids, -1)


@dataclass
class Aligned:
    """K teachers on one support: `probs` [N, K, U] at the union ids `ids` [N, U] and `tail`
    [N, K], the mass each puts outside them; `valid` [N, K]. Each teacher's row sums to 1."""

    ids: torch.Tensor
    probs: torch.Tensor
    tail: torch.Tensor
    valid: torch.Tensor


def align(targets: list[SparseTargets]) -> Aligned:
    """Put every teacher on the union of their supports. A teacher's tail bucket keeps what its
    tail does not spread onto union ids it does not list itself (computed from the stored tail,
    not as 1 - sum, so a tiny tail keeps its precision)."""
    ids = union_ids(targets)
    probs, tails = [], []
    for t in targets:
        probs.append(t.at(ids))
        extra = ((ids >= 0).sum(-1) - t.listed.sum(-1)).clamp_min(0)
        unlisted = (t.vocab - t.listed.sum(-1)).clamp_min(1)
        tails.append((t.tail * (1 - extra / unlisted)).clamp_min(0))
    valid = torch.stack([t.valid for t in targets], 1)
    return Aligned(ids, torch.stack(probs, 1), torch.stack(tails, 1), valid)
