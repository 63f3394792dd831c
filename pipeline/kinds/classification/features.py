"""Feature distillation from cached teacher features, with ADM's consensus weighting (offline form).

ADM (arXiv 2503.06685) weighs a feature loss by where student and teacher already agree:
per position p, S_p = cos(φ(F_s)_p, F_t,p) through a trainable projector φ, and the weights
w = stopgrad(normalise(S)) make high-agreement positions count more (an easy-to-hard
curriculum). Teachers are frozen here, so only ADM's student side (consensus learning) applies;
its teacher-side divergence loss has nothing to train (docs/methods.md, "ADM consensus weighting, offline").
The paper's exact normalisation and τ were not readable; we use softmax(S/τ) over a row's valid
positions scaled to mean 1, which keeps the loss scale fixed as S grows (docs/methods.md).

Positions are tokens for token-level features (`pooling: token`; teacher and student must share
the tokenizer so that position p is the same token) and rows of the batch for pooled features
(one vector per text), where the weights then favour the texts the student already matches.
One projector per teacher maps the student's hidden size to that teacher's cached width, which
is the teacher's hidden size or its fixed seeded projection (`features.project_to`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch
import torch.nn.functional as F

from distill.pipeline.config import ConfigError
from distill.storage.records import TeacherManifest


@dataclass
class TeacherFeatures:
    """One teacher's cached features for a batch: values [B, P, D] with mask [B, P] (P = 1 when
    pooled; token rows are zero-padded to the longest row)."""

    values: torch.Tensor
    mask: torch.Tensor
    pooled: bool

    def to(self, device) -> "TeacherFeatures":
        return TeacherFeatures(self.values.to(device), self.mask.to(device), self.pooled)


def feature_layout(manifest: TeacherManifest) -> tuple[int, bool] | None:
    """(width, pooled) of a teacher cache's `features` column, or None when it has none."""
    if "features" not in manifest.schema.names:
        return None
    kind = manifest.schema.field("features").type
    pooled = pa.types.is_fixed_size_list(kind)   # [D] per row, or list<[D]> per token
    return (kind if pooled else kind.value_type).list_size, pooled


def consensus_weights(similarity: torch.Tensor, mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Detached weights [B, P]: softmax(S/τ) over each row's valid positions, times their count,
    so a row's weights average 1; masked positions get 0."""
    logits = (similarity.detach() / tau).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)     # a row with no valid position
    return weights * mask.sum(-1, keepdim=True)


def align(student_hidden: torch.Tensor, student_mask: torch.Tensor,
          teacher: TeacherFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(student [B, P, H], teacher [B, P, D], mask [B, P]) at the positions both sides have.

    Pooled: the student's masked mean over tokens, one position per row. Token-level: the first
    min(T_student, T_teacher) positions (the same tokenizer gives the same tokens; a different
    max_length only truncates one side)."""
    if teacher.pooled:
        m = student_mask.unsqueeze(-1).to(student_hidden.dtype)
        pooled = (student_hidden * m).sum(1) / m.sum(1).clamp_min(1)
        return pooled.unsqueeze(1), teacher.values, teacher.mask
    p = min(student_hidden.shape[1], teacher.values.shape[1])
    return student_hidden[:, :p], teacher.values[:, :p], student_mask[:, :p] & teacher.mask[:, :p]


class FeatureDistiller(torch.nn.Module):
    """Trainable projectors (one per teacher with features) and the weighted feature loss."""

    def __init__(self, student_hidden: int, widths: list[int | None], *, consensus: bool = True,
                 tau: float = 0.1, distance: str = "cosine"):
        super().__init__()
        self.slots = [k for k, w in enumerate(widths) if w is not None]
        self.projectors = torch.nn.ModuleList(torch.nn.Linear(student_hidden, widths[k]) for k in self.slots)
        self.consensus, self.tau, self.distance = consensus, tau, distance

    def forward(self, student_hidden: torch.Tensor, student_mask: torch.Tensor,
                teachers: list[TeacherFeatures | None],
                row_weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        losses, metrics = [], {}
        for projector, k in zip(self.projectors, self.slots):
            student, target, mask = align(student_hidden, student_mask.bool(), teachers[k])
            projected = projector(student.float())
            target = target.float()
            similarity = F.cosine_similarity(projected, target, dim=-1)          # [B, P]
            mask = mask & (row_weights[:, None] > 0)
            weights = self._weights(similarity, mask, teachers[k].pooled)
            gap = (1 - similarity) if self.distance == "cosine" else (projected - target).pow(2).mean(-1)
            losses.append((weights * gap).sum() / mask.sum().clamp_min(1))
            mean = float(similarity.detach()[mask].mean()) if mask.any() else 0.0
            metrics[f"features/similarity/{k}"] = mean
        return torch.stack(losses).mean(), metrics

    def _weights(self, similarity: torch.Tensor, mask: torch.Tensor, pooled: bool) -> torch.Tensor:
        if not self.consensus:
            return mask.to(similarity.dtype)
        if pooled:  # one position per row: normalise across the rows of the batch
            return consensus_weights(similarity.T, mask.T, self.tau).T
        return consensus_weights(similarity, mask, self.tau)


def feature_widths(manifests: list[TeacherManifest], student_tokenizer_sha: str) -> list[int | None]:
    """Per teacher, the cached feature width (None without features). Token-level features need
    the student to share the teacher's tokenizer, or position p would be a different token."""
    widths = []
    for m in manifests:
        layout = feature_layout(m)
        if layout and not layout[1] and m.fingerprint.get("tokenizer_sha256") != student_tokenizer_sha:
            raise ConfigError(f"teacher '{m.name}' cached token-level features, but the student's "
                              "tokenizer differs from the teacher's; start the student from that "
                              "teacher (`student.from_teacher`) or cache pooled features "
                              "(`features.pooling: mean`)")
        widths.append(layout[0] if layout else None)
    if all(w is None for w in widths):
        raise ConfigError("train.features is set, but none of the teachers has cached features; add "
                          "`features: {layer: -1}` to a teacher and run `distill cache` again")
    return widths
