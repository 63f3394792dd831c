"""Run a classification / regression / relevance teacher over one shard of texts.

Texts are tokenized once, sorted by length and batched so each batch pads only to its own
longest text (the main speed-up over corpus-order batching on real, varied-length text);
results are scattered back to plan order before anything is written.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distill.pipeline.config import ClassificationTeacherConfig
from distill.pipeline.inference import autocast, encode_longest_first, pick_device


@dataclass
class ShardOutput:
    """Per-row teacher outputs for one shard, in plan order."""

    logits: np.ndarray                       # [rows, C] float32
    truncated: np.ndarray                    # [rows] bool
    mc_probs: np.ndarray | None = None       # [rows, C] mean probabilities over MC passes
    mc_entropy: np.ndarray | None = None     # [rows] H(mean probs) / log C
    mc_mutual_info: np.ndarray | None = None  # [rows] H(mean) - mean H, normalised like entropy
    features: np.ndarray | list[np.ndarray] | None = None  # [rows, D] or rows x [len, D]
    prompt_vector: np.ndarray | None = None  # [rows, D] float16, prompt-based teachers only

    def finite_rows(self) -> np.ndarray:
        """[rows] bool: rows whose logits (and MC statistics) are all finite."""
        valid = np.isfinite(self.logits).all(axis=1)
        if self.mc_probs is not None:
            valid &= np.isfinite(self.mc_probs).all(axis=1)
        return valid


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities; a single score is a binary relevance logit (sigmoid)."""
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(logits, dim=-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def projection_matrix(width: int, out: int, seed: int) -> np.ndarray:
    """The fixed seeded random projection for features (numpy: identical on every platform)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((width, out)) / np.sqrt(out)).astype(np.float32)


class BucketedInference(ABC):
    """What every encoder backend shares: the teacher's tokenizer, length-bucketed batches and
    the scatter back to plan order. A backend sets `tensors` (the array type its engine takes:
    "pt", "np") and implements `_forward(batch, seed) -> {output name: [B, ...] array}`; `run`
    is thread-safe (a teacher's shard tasks share one loaded model)."""

    tensors = "pt"

    def __init__(self, config: ClassificationTeacherConfig, model_dir: Path):
        from transformers import AutoTokenizer

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                                       trust_remote_code=config.trust_remote_code)
        self._lock = threading.Lock()

    def run(self, texts: list[str], seed: int = 0,
            on_rows: Callable[[int], None] | None = None,
            pairs: list[str] | None = None) -> ShardOutput:
        """`pairs`: each text's second text (a pair corpus), read as `tokenizer(text, pair)`;
        cross-encoders with one score and NLI-style pair classifiers alike."""
        with self._lock:
            return self._run(texts, seed, on_rows, pairs)

    def _run(self, texts, seed, on_rows, pairs) -> ShardOutput:
        cfg = self.config
        encoded, truncated, _, order = encode_longest_first(self.tokenizer, texts, cfg.max_length,
                                                            pairs, cfg.truncation)
        outputs: dict[str, list] = {}
        for b, start in enumerate(range(0, len(texts), cfg.batch_size)):
            rows = order[start:start + cfg.batch_size]
            features = {k: [encoded[k][i] for i in rows] for k in encoded.keys()}
            batch = self._place(self.tokenizer.pad(features, return_tensors=self.tensors))
            for name, value in self._forward(batch, seed * 1_000_003 + b).items():
                outputs.setdefault(name, []).append(value)
            if on_rows:
                on_rows(len(rows))
        return self._assemble(outputs, order, truncated)

    def _place(self, batch):
        """The padded batch where the engine reads it (torch moves it to the model's device)."""
        return batch

    @abstractmethod
    def _forward(self, batch, seed: int) -> dict:
        """One padded batch (longest first) -> its outputs by ShardOutput field name."""

    @staticmethod
    def _assemble(outputs: dict[str, list], order: np.ndarray, truncated: np.ndarray) -> ShardOutput:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        fields = {}
        for name, parts in outputs.items():
            if name == "features" and isinstance(parts[0], list):
                flat = [block for part in parts for block in part]
                fields[name] = [flat[i] for i in inverse]
            else:
                fields[name] = np.concatenate(parts)[inverse]
        return ShardOutput(truncated=truncated, **fields)


class ClassificationInference(BucketedInference):
    """The PyTorch backend: one loaded model (MC dropout flips its mode under the lock)."""

    def __init__(self, config: ClassificationTeacherConfig, model_dir: Path):
        super().__init__(config, model_dir)
        self.device = pick_device(config.device)
        self.model = self.load_model(model_dir).to(self.device).eval()
        self.num_labels = self.model.config.num_labels
        self._projection = None
        if config.features and config.features.project_to:
            width = self.model.config.hidden_size
            self._projection = torch.from_numpy(projection_matrix(
                width, config.features.project_to, config.features.seed)).to(self.device)

    def load_model(self, model_dir: Path) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, local_files_only=True, trust_remote_code=self.config.trust_remote_code)

    def _place(self, batch):
        return batch.to(self.device)

    @torch.inference_mode()
    def _forward(self, batch, seed: int) -> dict:
        cfg = self.config
        want_features = cfg.features is not None
        with autocast(self.device, self.config.dtype):
            out = self.model(**batch, output_hidden_states=want_features)
        result = {"logits": out.logits.float().cpu().numpy()}
        if want_features:
            result["features"] = self._features(out.hidden_states[cfg.features.layer].float(),
                                                batch["attention_mask"])
        if cfg.mc_dropout:
            result.update(self._mc_dropout(batch, cfg.mc_dropout.passes, seed))
        return result

    def _features(self, hidden: torch.Tensor, mask: torch.Tensor):
        if self._projection is not None:
            hidden = hidden @ self._projection
        if self.config.features.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return ((hidden * m).sum(1) / m.sum(1).clamp_min(1)).half().cpu().numpy()
        lengths = mask.sum(1).tolist()
        return [h[:n].half().cpu().numpy() for h, n in zip(hidden, lengths)]

    def _mc_dropout(self, batch, passes: int, seed: int) -> dict:
        """M stochastic passes with every dropout on (model.train(), incl. attention dropout),
        normalisation layers with running statistics kept in eval (docs/methods.md, MUKA)."""
        self.model.train()
        for module in self.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        try:
            torch.manual_seed(seed)
            probs = []
            for _ in range(passes):
                with autocast(self.device, self.config.dtype):
                    probs.append(probabilities(self.model(**batch).logits.float()))
        finally:
            self.model.eval()
        stacked = torch.stack(probs)                       # [M, B, C']
        mean = stacked.mean(0)
        log_c = np.log(mean.shape[-1])
        h_mean = entropy(mean)
        mutual_info = h_mean - entropy(stacked).mean(0)
        if self.num_labels == 1:  # keep the score's own width: P(relevant)
            mean = mean[:, 1:]
        return {"mc_probs": mean.cpu().numpy(), "mc_entropy": (h_mean / log_c).cpu().numpy(),
                "mc_mutual_info": (mutual_info / log_c).clamp_min(0).cpu().numpy()}
