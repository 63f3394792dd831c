"""Who a teacher is: its files' fingerprint, the settings that shape its output, its cache id.

The id is computed from files and config alone, without loading weights, so a finished cache
is recognised (and skipped) without any teacher work.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.pipeline.backends import BACKENDS, DEFAULT_BACKEND
from distill.pipeline.config import TeacherConfig
from distill.pipeline.continual.files import POOL_FILE, POOL_SETTINGS, has_prompt_pool
from distill.pipeline.errors import ConfigError
from distill.pipeline.folders import resolve_model_dir
from distill.pipeline.kinds import kind_of
from distill.storage import FORMAT_VERSION
from distill.storage.fs import sha256_local

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class TeacherIdentity:
    teacher_id: str
    model_dir: Path
    fingerprint: dict[str, str]
    settings: dict[str, Any]


def fingerprint(model_dir: Path) -> dict[str, str]:
    """Hashes of the weights, the config and the tokenizer files (whatever changes outputs); for
    a prompt-based teacher also of its pool and pool settings (top_k changes the prompts).

    Remembered per folder while no file in it changes (name, size, mtime): a teacher id is asked
    for once per teacher and corpus plan (every task of a tasks config, the completion check at
    the end of each caching run), and hashing the weights of a large model takes seconds."""
    stats = {p.name: p.stat() for p in model_dir.iterdir() if p.is_file()}
    state = tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats.items()))
    return dict(_fingerprint(model_dir, state))


@functools.lru_cache(maxsize=64)
def _fingerprint(model_dir: Path, state: tuple) -> tuple[tuple[str, str], ...]:
    """`state` (the folder's files, sizes and mtimes) is only the cache key."""
    def digest(files: list[Path]) -> str:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + sha256_local(f).encode())
        return h.hexdigest()

    weights = sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        raise ConfigError(f"{model_dir}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    tokenizer = sorted(p for p in model_dir.iterdir() if p.name in TOKENIZER_FILES)
    prints = {"weights_sha256": digest(weights), "config_sha256": digest([model_dir / "config.json"]),
              "tokenizer_sha256": digest(tokenizer)}
    if has_prompt_pool(model_dir):
        prints["prompt_pool_sha256"] = digest([model_dir / POOL_FILE, model_dir / POOL_SETTINGS])
    return tuple(prints.items())


def output_settings(config: TeacherConfig) -> dict[str, Any]:
    """The settings that determine the cached values (batch size and device do not): the kind's
    `identity_keys`, plus `backend` only when it is not the default, so every cache written
    before backends existed (all by torch) keeps its id and stays valid, and `truncation` (of
    pairs) likewise. Of `backend_options` only what changes the outputs enters (`quantize`, not
    where the export is kept)."""
    keys = set(config.identity_keys)
    keys |= {"truncation"} if config.truncation != "only_second" else set()
    keys |= {"backend"} if config.backend != DEFAULT_BACKEND else set()
    settings = config.model_dump(include=keys)
    if config.backend_options is not None:
        settings["backend_options"] = config.backend_options.model_dump(exclude={"export_dir"})
    return settings


def identify(config: TeacherConfig, plan_id: str, where: str) -> TeacherIdentity:
    """The teacher's id; for a backend that runs a converted copy (pipeline/backends.py) the
    copy's fingerprint joins the model's (the copy is made here the first time)."""
    model_dir = resolve_model_dir(config.model, where)
    prints = fingerprint(model_dir)
    backend = BACKENDS.get((kind_of(config, where).name, config.backend))
    if backend is not None:
        prints |= backend.prepared(config, model_dir, prints, where)
    settings = output_settings(config)
    key = json.dumps({"format": FORMAT_VERSION, "plan": plan_id, "fingerprint": prints,
                      "settings": settings}, sort_keys=True)
    teacher_id = hashlib.sha256(key.encode()).hexdigest()[:16]
    return TeacherIdentity(teacher_id, model_dir, prints, settings)
