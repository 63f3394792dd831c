"""The files a continual student writes beside `save_pretrained`, and what their presence means.

Kept free of torch so that `pipeline.teacher` can fingerprint a folder and tell a prompt-based
teacher from a plain classifier without loading anything.
"""

from __future__ import annotations

from pathlib import Path

POOL_FILE = "prompt_pool.safetensors"        # L2P keys and prompts
POOL_SETTINGS = "prompt_pool.json"           # top_k, and the teachers whose prompts are mapped
MAPPING_FILE = "prompt_mapping.safetensors"  # one PromptMapping per mapped teacher


def has_prompt_pool(folder: Path) -> bool:
    """A folder our continual trainer wrote in `prompts` mode: a prompt-based model."""
    return (folder / POOL_FILE).exists()


def maps_teacher_prompts(folder: Path) -> bool:
    """A student that needs its teachers' prompt vectors for every input it reads."""
    return (folder / MAPPING_FILE).exists()
