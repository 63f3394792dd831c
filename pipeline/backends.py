"""Inference backends: what runs a teacher's inference, chosen by its kind and `teachers[].backend`.

Its inference class (`TeacherInference`) is built from the teacher's config and model folder and runs one
shard's texts; the cache classes (pipeline/caching.py) only call `run` and write what it
returns. `BACKENDS` maps (kind, backend) to the inference class's import path and the optional outputs
it computes, so a new backend is one file with its inference class plus one line here per kind
it runs. Inference classes are named by import path and imported only when a model loads: config
checks and pre-flight stay free of torch.

A backend that runs a converted copy of the model (`onnx`: pipeline/kinds/classification/onnx.py) also names
a `prepare` function: it makes the copy once (or finds it) and returns the copy's fingerprint,
which joins the teacher's fingerprint, so a cache says which exact graph computed it.

Kinds (pipeline/kinds/): `classification`, `causal-lm`, and `prompt` (a classification teacher
whose folder holds a prompt pool); each kind's inference classes live in its package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from distill.pipeline.errors import ConfigError
from distill.pipeline.kinds import KINDS, imported

if TYPE_CHECKING:
    from distill.pipeline.config import TeacherConfig

DEFAULT_BACKEND = "torch"
OPTIONS = ("mc_dropout", "features")  # teacher settings that ask the inference for extra outputs


class ShardResult(Protocol):
    """What every kind's shard output offers the cache: per-row truncation and finiteness."""

    truncated: np.ndarray

    def finite_rows(self) -> np.ndarray: ...


class TeacherInference(Protocol):
    """One loaded teacher. `run` must be thread-safe (a teacher's shard tasks share it) and
    deterministic in (texts, seed); `on_rows(n)` reports progress. A causal-lm one also
    has `vocab_size`, the width of its output head (it sets the id type of the cached tokens)."""

    def __init__(self, config: TeacherConfig, model_dir: Path) -> None: ...

    def run(self, texts: list[str], seed: int = 0,
            on_rows: Callable[[int], None] | None = None) -> ShardResult: ...
    # A backend that reads pairs (`Backend.pairs`) also takes `pairs: list[str]`, each text's
    # second text, and tokenizes with pipeline/inputs.py like every other backend and the student.


@dataclass(frozen=True)
class Backend:
    inference: str                             # "module:Class" of a TeacherInference
    options: frozenset[str] = frozenset()     # the OPTIONS it computes
    pairs: bool = False                        # whether `run` takes pairs (pair corpora)
    why_not: dict[str, str] = field(default_factory=dict)  # option it lacks -> why (in the refusal)
    dtypes: frozenset[str] | None = None      # the `dtype`s it runs; None: all of them
    prepare: str | None = None                # "module:function" (config, model dir, fingerprint,
    #                                           where) -> the converted copy's fingerprint entries;
    #                                           a backend with one reads `backend_options`

    def inference_class(self) -> type[TeacherInference]:
        return imported(self.inference)

    def prepared(self, config: TeacherConfig, model_dir: Path, prints: dict[str, str],
                 where: str) -> dict[str, str]:
        """Fingerprint entries of the copy this backend runs (made now if missing); none when
        it runs the model's own files."""
        return imported(self.prepare)(config, model_dir, prints, where) if self.prepare else {}


BACKENDS: dict[tuple[str, str], Backend] = {
    ("classification", "torch"): Backend(
        "distill.pipeline.kinds.classification.inference:ClassificationInference",
        frozenset({"mc_dropout", "features"}), pairs=True),
    ("prompt", "torch"): Backend("distill.pipeline.kinds.prompt.teacher:PromptTeacherInference",
                                 frozenset({"mc_dropout"})),
    ("causal-lm", "torch"): Backend("distill.pipeline.kinds.causal_lm.inference:CausalLMInference"),
    ("classification", "onnx"): Backend(
        "distill.pipeline.kinds.classification.onnx:OnnxClassificationInference",
        why_not={"mc_dropout": "an ONNX Runtime graph has no dropout at inference",
                 "features": "its export has the logits only"},
        dtypes=frozenset({"float32"}),  # or int8 weights: backend_options.quantize
        prepare="distill.pipeline.kinds.classification.onnx:prepare_export", pairs=True),
}


def backend_for(config: TeacherConfig, kind: str, where: str) -> Backend:
    """The backend `config` asks for, checked to run `kind` with every option it sets; else a
    ConfigError naming the key and the choices (raised before any model loads)."""
    key, name = f"{where}: teachers[{config.name}]", config.backend
    names = sorted({b for _, b in BACKENDS})
    if name not in names:
        raise ConfigError(f"{key}.backend: unknown backend '{name}'; choose one of: {', '.join(names)}")
    able = _able(kind)
    if name not in able:
        raise ConfigError(f"{key}.backend: '{name}' cannot run {KINDS[kind].title}; backends that "
                          f"can: {', '.join(able) or 'none'}")
    backend = BACKENDS[kind, name]
    if backend.dtypes is not None and config.dtype not in backend.dtypes:
        raise ConfigError(f"{key}.dtype: '{name}' runs {' or '.join(sorted(backend.dtypes))}, not "
                          f"{config.dtype}; remove teachers[{config.name}].dtype or use backend torch")
    if config.backend_options is not None and backend.prepare is None:
        raise ConfigError(f"{key}.backend_options: '{name}' takes no options; remove them")
    for option in OPTIONS:
        if getattr(config, option, None) is None or option in backend.options:
            continue
        others = _able(kind, option)
        if not others:
            raise ConfigError(f"{key}.{option}: not available for {KINDS[kind].title}; remove it")
        why = f" ({backend.why_not[option]})" if option in backend.why_not else ""
        raise ConfigError(f"{key}.backend: '{name}' does not compute {option} for "
                          f"{KINDS[kind].title}{why}; use {' or '.join(others)}, or remove "
                          f"teachers[{config.name}].{option}")
    return backend


def _able(kind: str, option: str | None = None) -> list[str]:
    """The backends that run `kind` (and compute `option`)."""
    return sorted(b for (k, b), backend in BACKENDS.items()
                  if k == kind and (option is None or option in backend.options))
