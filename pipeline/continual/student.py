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

With prompt-based teachers (CDL-Prompt v1) the student also maps each teacher's prompt vector
into prompts of its own (`MappedPrompts`), inserted right after its own selected prompts. Such a
student needs those vectors for every input, in training (from the cache), in evaluation (from the
cache of the `eval` file) and in deployment (from the teacher's query and pool); its folder then
holds `prompt_mapping.safetensors` and names the teachers in `prompt_pool.json`. The output's
`prompt_vector` is this model's own: what it hands a student when it is a teacher.

Without a pool (`finetune`, `joint` baselines) it is the plain classifier, fully trainable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.pipeline.continual.files import MAPPING_FILE, POOL_FILE, POOL_SETTINGS
from distill.pipeline.continual.prompts import MappedPrompts, PromptPool, prompt_vector
from distill.pipeline.student import is_head


@dataclass
class StudentOutput:
    logits: torch.Tensor        # [B, C] over all the student's classes
    match_loss: torch.Tensor    # key-query matching loss (0 without a pool)
    prompt_vector: torch.Tensor | None = None   # [B, D] mean of the selected prompts (with a pool)


def insert_after_first(sequence: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
    """`inserted` [B, P, ...] placed after position 0 ([CLS]) of `sequence` [B, T, ...]."""
    return torch.cat([sequence[:, :1], inserted.to(sequence.dtype), sequence[:, 1:]], 1)


class ContinualStudent(nn.Module):
    def __init__(self, model: nn.Module, pool: PromptPool | None = None,
                 mapped: MappedPrompts | None = None):
        super().__init__()
        if mapped is not None and pool is None:
            raise ValueError("mapped teacher prompts go next to the student's own: they need a pool")
        self.model, self.pool, self.mapped = model, pool, mapped
        if pool is not None:  # L2P: backbone frozen; prompts, keys and head learn
            for name, param in model.named_parameters():
                param.requires_grad_(is_head(name))

    @property
    def config(self):
        return self.model.config

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(trainable backbone weights, new weights: head, prompt pool and prompt mappings)."""
        body = [p for n, p in self.model.named_parameters() if p.requires_grad and not is_head(n)]
        new = [p for n, p in self.model.named_parameters() if is_head(n)]
        prompts = [p for module in (self.pool, self.mapped) if module is not None
                   for p in module.parameters()]
        return body, new + prompts

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
                token_type_ids: torch.Tensor | None = None,
                teacher_prompts: torch.Tensor | None = None) -> StudentOutput:
        """`teacher_prompts` [B, sum of widths]: the mapped teachers' prompt vectors side by side
        (NaN rows: missing), required exactly when the student maps teacher prompts."""
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if (teacher_prompts is None) != (self.mapped is None):
            maps = ", ".join(self.mapped_teachers) or "none"
            raise ValueError("teacher_prompts are given exactly when the student maps the prompts "
                             f"of prompt-based teachers (it maps: {maps})")
        if self.pool is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits
            return StudentOutput(logits, logits.new_zeros(()))
        prompts, match = self.pool(self.query(input_ids, attention_mask, **extra))
        inserted, present = prompts, attention_mask.new_ones(prompts.shape[:2])
        if self.mapped is not None:
            mapped, mapped_present = self.mapped(teacher_prompts.float())
            inserted = torch.cat([prompts, mapped], 1)
            present = torch.cat([present, mapped_present.to(present.dtype)], 1)
        embeds = insert_after_first(self.model.get_input_embeddings()(input_ids), inserted)
        mask = insert_after_first(attention_mask, present)
        if token_type_ids is not None:
            types = token_type_ids.new_zeros(present.shape)
            extra["token_type_ids"] = insert_after_first(token_type_ids, types)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, **extra).logits
        return StudentOutput(logits, match, prompt_vector(prompts))

    @property
    def mapped_teachers(self) -> list[str]:
        return self.mapped.teachers if self.mapped is not None else []

    def save(self, folder: Path, tokenizer) -> None:
        """The classifier with `save_pretrained` (+ tokenizer); the pool and mappings beside it."""
        self.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if self.pool is None:
            return
        save_file({"keys": self.pool.keys.detach().cpu().contiguous(),
                   "prompts": self.pool.prompts.detach().cpu().contiguous()}, folder / POOL_FILE)
        settings = {"top_k": self.pool.top_k}
        if self.mapped is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.mapped.state_dict().items()},
                      folder / MAPPING_FILE)
            settings["mapped_teachers"] = [{"name": name, "prompt_width": width} for name, width
                                           in zip(self.mapped.teachers, self.mapped.widths)]
        (folder / POOL_SETTINGS).write_text(json.dumps(settings) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ContinualStudent:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        if not (folder / POOL_FILE).exists():
            return cls(model)
        state = load_file(folder / POOL_FILE)
        size, length, dim = state["prompts"].shape
        settings = json.loads((folder / POOL_SETTINGS).read_text())
        pool = PromptPool(size, length, settings["top_k"], dim, state["keys"].shape[1])
        pool.load_state_dict(state)
        if "mapped_teachers" not in settings:
            return cls(model, pool)
        state = load_file(folder / MAPPING_FILE)
        components, mapped_length, _ = state["maps.0.prompts"].shape
        teachers = settings["mapped_teachers"]
        mapped = MappedPrompts([t["name"] for t in teachers], [t["prompt_width"] for t in teachers],
                               dim, components, mapped_length)
        mapped.load_state_dict(state)
        return cls(model, pool, mapped)
