"""Model folders named in a config: found locally (never downloaded) and readable, checked
before anything loads. Torch-free, and free of the config models, so the kinds registry and the
backends can use it without importing them."""

from __future__ import annotations

import os
from pathlib import Path

from distill.pipeline.errors import ConfigError


def resolve_model_dir(model: str, where: str) -> Path:
    """A local model folder, or a hub id already in the local Hugging Face cache."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"{where}: {path} has no config.json; point it at a folder "
                              "written by save_pretrained")
        check_readable(path, where)
        return path
    if path.is_absolute() or model.startswith(".") or model.count("/") > 1:
        raise ConfigError(f"{where}: model path {model} does not exist; point it at a folder "
                          "written by save_pretrained")
    from huggingface_hub import snapshot_download

    try:  # never downloads: teachers must already be on this machine
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as e:
        raise ConfigError(f"{where}: model {model} is neither a local folder nor in the local "
                          f"Hugging Face cache ({type(e).__name__}). Download it beforehand or "
                          "use a local path.") from None


def check_readable(folder: Path, where: str) -> None:
    """Every file of a model folder can be read by this process. `save_pretrained` writes
    model.safetensors with mode 0600, so a folder copied for another user (a container's uid)
    fails only once the model loads, deep in a flow; here it fails first, naming the file."""
    for file in sorted(folder.rglob("*")):
        if file.is_file() and not os.access(file, os.R_OK):
            raise ConfigError(f"{where}: cannot read {file} (mode {file.stat().st_mode & 0o777:04o}, "
                              f"owner uid {file.stat().st_uid}, this process uid {os.getuid()}); make "
                              f"the folder readable, e.g. chmod -R a+rX {folder}")
