"""The `onnx` backend (pipeline/kinds/classification/onnx.py): a tiny BERT exported once with torch.onnx and
run by onnxruntime gives the torch backend's logits, caches through the CLI, reuses its export,
and refuses what it cannot do (and an export that is not what was recorded) on one line."""

import json
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import tiny
from distill.flows.cli import app
from distill.pipeline.caching import teacher_cache
from distill.pipeline.config import ConfigError, load_config
from distill.pipeline.corpus import plan_corpus
from distill.pipeline.kinds.classification import onnx as onnx_runner
from distill.storage.cache import Cache
from distill.storage.columns import to_matrix

pytest.importorskip("onnxruntime", reason="pip install 'distill[onnx]'")

TEXTS = tiny.sentences(40, seed=5) + ["cat", "the " * 30]  # one token .. truncated at max_length


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One export folder for the module: every project's teacher-a has the same weights (seeded),
    so its export is made once here and found by the later tests."""
    return tmp_path_factory.mktemp("exports")


def _teachers(**onnx):
    """The same tiny teacher under both backends."""
    return [{"name": "t", "model": "teacher-a", "max_length": 16, "batch_size": 8},
            {"name": "o", "model": "teacher-a", "max_length": 16, "batch_size": 8, "backend": "onnx",
             **onnx}]


def _caches(project, **onnx):
    config = load_config(project.config(teachers=_teachers(**onnx)))
    cache = Cache(config.cache)
    plan = plan_corpus(cache, config.corpus)
    return [teacher_cache(cache, plan, t) for t in config.teachers]


def _export_dirs(folder):
    return sorted(p for p in folder.iterdir())


def _shared(exports, **options):
    return {"backend_options": {"export_dir": str(exports), **options}}


@pytest.mark.parametrize("num_labels", [4, 1])  # a class head and a single relevance score
def test_onnx_logits_equal_the_torch_backend(project, num_labels):
    tiny.classifier(project.root / "teacher-a", num_labels=num_labels, seed=1)
    torch_teacher, onnx_teacher = _caches(project)
    expected, got = (t.inference.run(TEXTS) for t in (torch_teacher, onnx_teacher))
    assert got.logits.shape == (len(TEXTS), num_labels) and got.logits.dtype == np.float32
    assert np.abs(got.logits - expected.logits).max() <= 1e-3
    np.testing.assert_array_equal(got.truncated, expected.truncated)
    assert got.truncated[-1] and not got.truncated[-2]
    [export] = _export_dirs(project.cache / "exports")  # under the cache root by default
    record = json.loads((export / "export.json").read_text())
    assert onnx_teacher.identity.fingerprint["onnx_sha256"] == onnx_runner._digest(record["files"])
    assert onnx_teacher.identity.fingerprint["weights_sha256"] == torch_teacher.identity.fingerprint[
        "weights_sha256"]


def test_onnx_reads_pairs_as_the_torch_backend_does(project):
    """A cross-encoder over (query, passage) pairs: the export takes the pair's token type ids,
    so its scores equal the torch backend's, truncation flags included."""
    tiny.classifier(project.root / "teacher-a", num_labels=1, seed=2, pairs=True)
    torch_teacher, onnx_teacher = _caches(project)
    pairs = list(reversed(TEXTS))
    expected, got = (t.inference.run(TEXTS, pairs=pairs) for t in (torch_teacher, onnx_teacher))
    single = torch_teacher.inference.run(TEXTS)
    assert np.abs(got.logits - expected.logits).max() <= 1e-3
    assert np.abs(single.logits - expected.logits).max() > 1e-3  # the pair did change the scores
    np.testing.assert_array_equal(got.truncated, expected.truncated)


@pytest.mark.usefixtures("prefect")
def test_distill_cache_with_onnx_writes_its_cache_and_reuses_its_export(project, monkeypatch,
                                                                         exports):
    config = project.config(teachers=_teachers(**_shared(exports)))
    result = CliRunner().invoke(app, ["cache", str(config)])
    assert result.exit_code == 0, result.output
    cache = Cache(project.cache)
    manifests = {m.name: m for m in cache.manifests()}
    onnx_manifest = manifests["o"]
    assert onnx_manifest.complete and onnx_manifest.settings["backend"] == "onnx"
    assert "onnx_sha256" in onnx_manifest.fingerprint and "onnx_sha256" not in manifests["t"].fingerprint

    def logits(manifest):
        return np.concatenate([to_matrix(cache.read_shard(manifest.teacher_id, e).column("logits"))
                               for e in manifest.shards])

    assert np.abs(logits(onnx_manifest) - logits(manifests["t"])).max() <= 1e-3
    [export] = _export_dirs(exports)
    stamp = {p.name: p.stat().st_mtime_ns for p in export.iterdir()}

    def no_export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_runner, "_export", no_export)
    (project.cache / "teachers" / onnx_manifest.teacher_id / "shard-00001.arrow").unlink()
    again = CliRunner().invoke(app, ["cache", str(config), "--teacher", "o"])
    assert again.exit_code == 0, again.output
    assert _export_dirs(exports) == [export]
    assert {p.name: p.stat().st_mtime_ns for p in export.iterdir()} == stamp
    [manifest] = [m for m in cache.manifests() if m.name == "o"]
    assert manifest.teacher_id == onnx_manifest.teacher_id and manifest.complete


@pytest.mark.parametrize("setting, message", [
    ({"mc_dropout": {"passes": 4}},
     r"teachers\[o\]\.backend: 'onnx' does not compute mc_dropout for a classification teacher "
     r"\(an ONNX Runtime graph has no dropout at inference\); use torch, or remove "
     r"teachers\[o\]\.mc_dropout"),
    ({"features": {"layer": -1}},
     r"teachers\[o\]\.backend: 'onnx' does not compute features for a classification teacher "
     r"\(its export has the logits only\); use torch, or remove teachers\[o\]\.features"),
    ({"dtype": "bfloat16"},
     r"teachers\[o\]\.dtype: 'onnx' runs float32, not bfloat16; remove teachers\[o\]\.dtype or "
     r"use backend torch"),
])
def test_what_onnx_cannot_do_is_refused_on_one_line_before_any_export(project, monkeypatch, setting,
                                                                      message):
    monkeypatch.setattr(onnx_runner, "ensure_export", lambda *a: pytest.fail("exported"))
    config = project.config(teachers=_teachers(**setting))
    result = CliRunner().invoke(app, ["cache", str(config)])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {config}: ") and re.search(message, line)
    assert not project.cache.exists()


def test_backend_options_are_refused_for_torch_and_a_remote_cache_needs_an_export_dir(project):
    with pytest.raises(ConfigError, match=r"teachers\[t\]\.backend_options: 'torch' takes no options"):
        load_config(project.config(teachers=[{"name": "t", "model": "teacher-a",
                                              "backend_options": {"quantize": "int8"}}]))
    with pytest.raises(ConfigError, match=r"teachers\[o\]\.backend_options\.export_dir: required "
                                          r"with a remote cache \(s3://bucket/c\)"):
        load_config(project.config(cache="s3://bucket/c", teachers=_teachers()[1:]))
    named = load_config(project.config(teachers=_teachers(backend_options={"export_dir": "ex"})))
    assert named.teachers[1].backend_options.export_dir == str(project.root / "ex")


def _break_truncated(export):
    model = export / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])


def _break_missing(export):
    (export / "model.onnx").unlink()


def _break_record(export):
    (export / "export.json").write_text("{")


@pytest.mark.parametrize("damage, why", [
    (_break_truncated, r"model\.onnx differs from the sha256 in export\.json"),
    (_break_missing, r"missing \['model\.onnx'\]"),
    (_break_record, r"export\.json unreadable"),
])
@pytest.mark.usefixtures("prefect")
def test_a_broken_export_is_refused_on_one_line_and_left_as_it_is(project, exports, damage, why):
    _caches(project, **_shared(exports))  # exports (or finds the module's export)
    [shared] = [e for e in _export_dirs(exports)
                if json.loads((e / "export.json").read_text())["quantize"] is None]
    own = project.root / "exports"
    export = shutil.copytree(shared, own / shared.name)
    teachers = _teachers(backend_options={"export_dir": str(own)})[1:]
    damage(export)
    left = {p.name: p.read_bytes() for p in export.iterdir()}
    config = project.config(teachers=teachers)
    result = CliRunner().invoke(app, ["cache", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {export}: broken ONNX export of teachers[o] (")
    assert re.search(why, line) and line.endswith(
        "delete the folder and the next run exports the teacher again")
    assert {p.name: p.read_bytes() for p in export.iterdir()} == left


def test_int8_quantization_is_its_own_export_and_teacher_id(project, exports):
    fp32 = _caches(project, **_shared(exports))[1]
    before = _export_dirs(exports)
    int8 = _caches(project, **_shared(exports, quantize="int8"))[1]
    [new] = set(_export_dirs(exports)) - set(before)
    assert json.loads((new / "export.json").read_text())["quantize"] == "int8"
    assert int8.teacher_id != fp32.teacher_id
    assert int8.identity.settings["backend_options"] == {"quantize": "int8"}
    assert int8.identity.fingerprint["onnx_sha256"] != fp32.identity.fingerprint["onnx_sha256"]
    out, ref = int8.inference.run(TEXTS).logits, fp32.inference.run(TEXTS).logits
    agree = (out.argmax(1) == ref.argmax(1)).mean()
    assert agree >= 0.8 and not np.array_equal(out, ref)


def test_a_cuda_device_without_the_cuda_provider_is_refused(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_runner.providers("auto", "o") == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match=r"^teachers\[o\]\.device: cuda:1, but this onnxruntime has "
                                          r"no CUDA provider"):
        onnx_runner.providers("cuda:1", "o")


@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="onnxruntime has no CUDA provider here (onnxruntime-gpu on a GPU host)")
def test_the_cuda_provider_gives_the_cpu_logits(project, exports):
    cpu = _caches(project, device="cpu", **_shared(exports))[1].inference.run(TEXTS).logits
    gpu = _caches(project, device="cuda", **_shared(exports))[1]
    assert gpu.inference.session.get_providers()[0] == "CUDAExecutionProvider"
    assert np.abs(gpu.inference.run(TEXTS).logits - cpu).max() <= 1e-3


def test_a_runner_never_exports_it_stops_where_the_export_is_not_there(project):
    """A cluster worker that cannot see export_dir must not run an export of its own."""
    config = load_config(project.config(teachers=_teachers(backend_options={"export_dir": "none"})))
    teacher = config.teachers[1]
    with pytest.raises(ConfigError, match=r"/none/[0-9a-f]{16}: no ONNX export of teachers\[o\] on "
                                          r"this machine; put backend_options\.export_dir on a "
                                          r"filesystem every worker shares$"):
        onnx_runner.OnnxClassificationInference(teacher, project.root / "teacher-a")
    assert not (project.root / "none").exists()
