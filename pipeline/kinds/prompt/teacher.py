"""A prompt-based teacher: a folder our continual trainer wrote in `prompts` mode, cached with
its prompts (CDL-Prompt v1, docs/continual.md).

Such a folder is a classifier only together with its prompt pool; run as a plain Hugging Face
classifier it would give other logits. So it is loaded with `ContinualStudent.load` and run
through that class's own forward (frozen query -> top-k keys -> prompts inserted after [CLS]),
and each row stores, besides the logits, the teacher's prompt vector: the prompts it selected,
averaged over their positions (CDL v1's v), as `prompt_vector fixed_size_list<float16>[D]`.
A student maps these into prompts of its own (`MappedPrompts` in pipeline/continual/prompts.py).
The manifest records the pool (`settings.prompt_pool`); the fingerprint covers the pool files.

Refused: `features` (hidden states would mix prompt positions into what ADM compares token by
token, so no backend of the `prompt` kind offers them: pipeline/backends.py), and a folder that
itself maps teacher prompts (it needs its own teachers' vectors for every input, which a cache
of this teacher could not supply).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors import safe_open

from distill.pipeline.continual.files import POOL_FILE, POOL_SETTINGS, maps_teacher_prompts
from distill.pipeline.continual.student import ContinualStudent
from distill.pipeline.inference import autocast
from distill.pipeline.kinds.classification.cache import ClassificationCache
from distill.pipeline.kinds.classification.inference import ClassificationInference, ShardOutput
from distill.storage.columns import fixed_rows


class PromptTeacherInference(ClassificationInference):
    """The classifier's inference with the model's prompts: logits and prompt vectors per row."""

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        return ContinualStudent.load(model_dir)

    @torch.inference_mode()
    def _forward(self, batch, seed: int) -> dict:
        with autocast(self.device, self.config.dtype):
            out = self.model(**batch)
        result = {"logits": out.logits.float().cpu().numpy(),
                  "prompt_vector": out.prompt_vector.half().cpu().numpy()}
        if self.config.mc_dropout:
            result.update(self._mc_dropout(batch, self.config.mc_dropout.passes, seed))
        return result


class PromptTeacherCache(ClassificationCache):
    """A classification cache plus the `prompt_vector` column and the pool in the manifest."""

    kind = "prompt"

    def describe(self) -> tuple[dict, pa.Schema]:
        from transformers import AutoConfig

        name, folder = self.config.name, self.identity.model_dir
        if maps_teacher_prompts(folder):
            raise ValueError(f"teachers[{name}].model: {folder} maps its own teachers' prompts, so it "
                             "needs their prompt vectors for every input; use a student trained "
                             "with continual.map_teacher_prompts: false as a teacher")
        settings, schema = super().describe()
        with safe_open(folder / POOL_FILE, "pt") as pool:
            size, length, dim = pool.get_slice("prompts").get_shape()
        top_k = json.loads((folder / POOL_SETTINGS).read_text())["top_k"]
        limit = getattr(AutoConfig.from_pretrained(folder, local_files_only=True),
                        "max_position_embeddings", None)
        if limit is not None and self.config.max_length + top_k * length > limit:
            raise ValueError(f"teachers[{name}].max_length ({self.config.max_length}) + the "
                             f"{top_k} x {length} prompt positions of its pool exceed its {limit} "
                             "positions; lower max_length")
        settings["prompt_pool"] = {"size": size, "length": length, "top_k": top_k, "dim": dim}
        return settings, schema.append(pa.field("prompt_vector", pa.list_(pa.float16(), dim)))

    def columns(self, out: ShardOutput, valid: np.ndarray) -> dict[str, pa.Array]:
        return {**super().columns(out, valid), "prompt_vector": fixed_rows(out.prompt_vector, valid)}
