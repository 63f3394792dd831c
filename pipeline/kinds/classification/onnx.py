"""The `onnx` backend: a classification teacher exported once to ONNX and run by ONNX Runtime.

On CPU, ONNX Runtime's fused encoder kernels run a BERT-style teacher faster than PyTorch eager
mode (bench/cache_speed.py --backends); batching is the torch backend's (length buckets,
pipeline/kinds/classification/inference.py), only the engine differs.

The export lives in `backend_options.export_dir/<key>/` (default: `exports/` in the cache root),
`<key>` a hash of the teacher's fingerprint, the quantization and the exporter, so new weights
get a new export and the same ones reuse theirs. The folder is written under a temporary name and
renamed when complete; `export.json` records the sha256 of every file in it, checked before each
use (a changed or truncated export is refused, never run), and that digest enters the teacher id.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from distill.pipeline.config import ClassificationTeacherConfig, ConfigError
from distill.pipeline.kinds.classification.inference import BucketedInference
from distill.pipeline.teacher import fingerprint
from distill.storage.fs import sha256_local

MODEL_FILE, RECORD = "model.onnx", "export.json"
OPSET = 18
# Two texts of different lengths: the batch and sequence axes stay dynamic (the exporter fixes
# an axis it sees at size 1) and the traced graph keeps the padding mask.
SAMPLE_TEXTS = ["a short text", "a somewhat longer text, so that this batch needs padding"]
NEEDS = ("onnxruntime", "onnx", "onnxscript")  # run, quantize, export (torch.onnx's exporter)


def prepare_export(config: ClassificationTeacherConfig, model_dir: Path, prints: dict[str, str],
                   where: str) -> dict[str, str]:
    """The export's fingerprint for the teacher id (exporting first if there is none yet)."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"teachers[{config.name}].backend: onnx needs {', '.join(missing)}, "
                          "which this environment lacks; pip install 'distill[onnx]'")
    folder = ensure_export(config, model_dir, prints)
    return {"onnx_sha256": _digest(_recorded_files(folder))}


def ensure_export(config: ClassificationTeacherConfig, model_dir: Path, prints: dict[str, str]) -> Path:
    """The checked export folder of this teacher, made now if missing; a ConfigError for one
    that is broken (the message names the folder and says to delete it)."""
    folder = _export_folder(config, prints)
    if not folder.exists():
        _export_atomically(config, model_dir, prints, folder)
    _check(folder, config.name)
    return folder


def checked_export(config: ClassificationTeacherConfig, model_dir: Path) -> Path:
    """The export the inference loads: the one the teacher id was computed from (`prepare_export`
    made it in the process that planned the run), checked again and never made here, so a
    cluster worker that cannot see `export_dir` stops with a message instead of running an
    export of its own that the cache would not describe."""
    folder = _export_folder(config, fingerprint(model_dir))
    if not folder.exists():
        raise ConfigError(f"{folder}: no ONNX export of teachers[{config.name}] on this machine; "
                          "put backend_options.export_dir on a filesystem every worker shares")
    _check(folder, config.name)
    return folder


def _export_folder(config: ClassificationTeacherConfig, prints: dict[str, str]) -> Path:
    options = config.backend_options
    if options is None or options.export_dir is None:
        raise ConfigError(f"teachers[{config.name}].backend_options.export_dir: not set; name the "
                          "folder that keeps the ONNX export (load the config with load_config)")
    key = json.dumps({"fingerprint": prints, "quantize": options.quantize, "opset": OPSET,
                      "torch": torch.__version__}, sort_keys=True)
    return Path(options.export_dir) / hashlib.sha256(key.encode()).hexdigest()[:16]


def _export_atomically(config: ClassificationTeacherConfig, model_dir: Path, prints: dict[str, str],
                       folder: Path) -> None:
    """Export into `<folder>.tmp-<pid>` and rename it into place when complete: a killed export
    leaves no folder that looks finished; of two processes exporting at once, one rename wins
    and the other's copy is dropped."""
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _export(config, model_dir, tmp)
        QUANTIZERS[config.backend_options.quantize](tmp / MODEL_FILE)
        files = {p.name: sha256_local(p) for p in sorted(tmp.iterdir())}
        record = {"teacher_fingerprint": prints, "quantize": config.backend_options.quantize,
                  "opset": OPSET, "torch": torch.__version__, "files": files}
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / RECORD).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export(config: ClassificationTeacherConfig, model_dir: Path, out: Path) -> None:
    """torch.onnx's exporter (torch.export based) with dynamic batch and sequence axes, over
    every input the teacher's tokenizer gives (so pair inputs' token_type_ids too)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=config.trust_remote_code).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                              trust_remote_code=config.trust_remote_code)
    sample = dict(tokenizer(SAMPLE_TEXTS, padding=True, return_tensors="pt"))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with warnings.catch_warnings():  # the exporter's notes on its own internals
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (), kwargs=sample, input_names=list(sample),
                                    output_names=["logits"], opset_version=OPSET, dynamo=True,
                                    dynamic_shapes={name: {0: batch, 1: sequence} for name in sample},
                                    verbose=False, report=False)
    program.save(str(out / MODEL_FILE))


def _int8(path: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights of the MatMuls, activations quantized
    per batch at run time; replaces the float32 file. The exporter's intermediate shape
    annotations are dropped first: the quantizer re-infers shapes and refuses some of them."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    for p in path.parent.iterdir():  # the graph and any external-data file beside it
        p.unlink()
    quantize_dynamic(model, path, weight_type=QuantType.QInt8)


QUANTIZERS = {None: lambda path: None, "int8": _int8}


def _check(folder: Path, name: str) -> None:
    """Every file `export.json` lists is there with its recorded sha256, and no other one."""
    def broken(why: str) -> ConfigError:
        return ConfigError(f"{folder}: broken ONNX export of teachers[{name}] ({why}); delete "
                           "the folder and the next run exports the teacher again")

    if not folder.is_dir():
        raise broken("not a folder")
    try:
        files = json.loads((folder / RECORD).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise broken(f"{RECORD} unreadable: {type(e).__name__}") from None
    present = {p.name for p in folder.iterdir()} - {RECORD}
    if MODEL_FILE not in files or present != set(files):
        missing, extra = sorted(set(files) - present), sorted(present - set(files))
        raise broken(f"missing {missing or [MODEL_FILE]}, unexpected {extra}")
    for file, sha in files.items():
        if _sha256(folder / file) != sha:
            raise broken(f"{file} differs from the sha256 in {RECORD}")


def _recorded_files(folder: Path) -> dict[str, str]:
    return json.loads((folder / RECORD).read_text())["files"]


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    """sha256 of a file, remembered while its size and mtime stay the same (an export is checked
    each time a teacher id is asked for)."""
    st = path.stat()
    return _sha256_of(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_local(path)


def providers(device: str, name: str) -> list:
    """ONNX Runtime execution providers for `teachers[].device`: CUDA's where asked for (or
    present, with `auto`), else the CPU's."""
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cpu" or (device == "auto" and not cuda):
        return ["CPUExecutionProvider"]
    if not cuda:
        raise ConfigError(f"teachers[{name}].device: {device}, but this onnxruntime has no CUDA "
                          "provider; install onnxruntime-gpu or set device: cpu")
    index = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxClassificationInference(BucketedInference):
    """Logits of a sequence classifier (any number of labels, single scores too) from its
    export. ONNX Runtime uses as many threads as torch does in this process
    (`torch.get_num_threads()`), so both backends get the same cores."""

    tensors = "np"

    def __init__(self, config: ClassificationTeacherConfig, model_dir: Path):
        import onnxruntime as ort

        super().__init__(config, model_dir)
        folder = checked_export(config, model_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # warnings about unused initializers are not the user's
        self.session = ort.InferenceSession(str(folder / MODEL_FILE), options,
                                            providers=providers(config.device, config.name))
        self._inputs = [i.name for i in self.session.get_inputs()]

    def _forward(self, batch, seed: int) -> dict:
        feed = {name: np.asarray(batch[name], dtype=np.int64) for name in self._inputs}
        (logits,) = self.session.run(["logits"], feed)
        return {"logits": logits.astype(np.float32, copy=False)}
