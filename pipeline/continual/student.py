"""The continual student: a Hugging Face sequence classifier, with or without an L2P prompt pool.

With a pool (CDL-Prompt, `continual.mode: prompts`) the backbone is frozen and only the pool and
the classification head learn. The query is the mean-pooled output of the student's pretrained
encoder without prompts: the paper's query network is a frozen copy of the student's pretrained
backbone, and ours is frozen and unchanged by training, so it is that copy without a second set
of weights. Mean pooling instead of ViT [CLS] because our backbones are sentence encoders
trained with mean pooling (all-MiniLM-L6-v2). The selected prompts go right after the first
token ([CLS]) of the input embeddings, so the classifier still reads [CLS]; they pass through
the embedding layer's position embeddings and LayerNorm like the tokens (HF models take
`inputs_embeds` before those), unlike L2P on ViT, which prepends after the patch embedding.

Without a pool (`finetune`, `joint` baselines) it is the plain classifier, fully trainable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.continual.prompts import PromptPool
from pipeline.student import is_head

POOL_FILE, POOL_SETTINGS = "prompt_pool.safetensors", "prompt_pool.json"


@dataclass
class StudentOutput:
    logits: torch.Tensor        # [B, C] over all the student's classes
    match_loss: torch.Tensor    # key-query matching loss (0 without a pool)


def insert_after_first(sequence: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
    """`inserted` [B, P, ...] placed after position 0 ([CLS]) of `sequence` [B, T, ...]."""
    return torch.cat([sequence[:, :1], inserted.to(sequence.dtype), sequence[:, 1:]], 1)


class ContinualStudent(nn.Module):
    def __init__(self, model: nn.Module, pool: PromptPool | None = None):
        super().__init__()
        self.model, self.pool = model, pool
        if pool is not None:  # L2P: backbone frozen; prompts, keys and head learn
            for name, param in model.named_parameters():
                param.requires_grad_(is_head(name))

    @property
    def config(self):
        return self.model.config

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone weights, new weights: head and prompt pool)."""
        body = [p for n, p in self.model.named_parameters() if p.requires_grad and not is_head(n)]
        new = [p for n, p in self.model.named_parameters() if is_head(n)]
        return body, new + (list(self.pool.parameters()) if self.pool is not None else [])

    @torch.no_grad()
    def query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Mean-pooled frozen encoder output [B, D], always without dropout."""
        encoder = self.model.base_model
        was_training = encoder.training
        encoder.eval()
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        encoder.train(was_training)
        weights = attention_mask[..., None].to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> StudentOutput:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if self.pool is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
            return StudentOutput(logits, logits.new_zeros(()))
        prompts, match = self.pool(self.query(input_ids, attention_mask, **extra))
        embeds = insert_after_first(self.model.get_input_embeddings()(input_ids), prompts)
        slots = prompts.shape[:2]
        mask = insert_after_first(attention_mask, attention_mask.new_ones(slots))
        if token_type_ids is not None:
            extra["token_type_ids"] = insert_after_first(token_type_ids, token_type_ids.new_zeros(slots))
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, **extra).logits
        return StudentOutput(logits, match)

    def save(self, folder: Path, tokenizer) -> None:
        """The classifier with `save_pretrained` (+ tokenizer), and the pool beside it."""
        self.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if self.pool is not None:
            save_file({"keys": self.pool.keys.detach().cpu().contiguous(),
                       "prompts": self.pool.prompts.detach().cpu().contiguous()}, folder / POOL_FILE)
            (folder / POOL_SETTINGS).write_text(json.dumps({"top_k": self.pool.top_k}) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ContinualStudent:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        if not (folder / POOL_FILE).exists():
            return cls(model)
        state = load_file(folder / POOL_FILE)
        size, length, dim = state["prompts"].shape
        top_k = json.loads((folder / POOL_SETTINGS).read_text())["top_k"]
        pool = PromptPool(size, length, top_k, dim, state["keys"].shape[1])
        pool.load_state_dict(state)
        return cls(model, pool)
