"""Causal LMs at today's vocabulary sizes, on tiny real Llamas built from configs: a padded output
head (152,064 rows over a 151,936-id tokenizer, as Qwen2 ships) is cached and trained on real ids
only with the mass on its padded rows reported, a head smaller than its tokenizer is refused, and
caching a 262,144-id teacher at batch 8 x 512 stays far below the batch x length x vocabulary
tensor in memory."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny
from distill.flows.caching import cache_teachers
from distill.inspection.report import inspect_cache
from distill.pipeline.config import ConfigError, load_config, teacher_config
from distill.pipeline.kinds.causal_lm.inference import CausalLMInference
from distill.pipeline.trainer import train
from distill.storage.cache import Cache

QWEN_IDS, QWEN_ROWS = 151_936, 152_064
TEXTS = tiny.sentences(6, seed=3, max_words=10)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """A teacher with a padded head whose padded rows are loud: copies of real rows, scaled up,
    so a good part of the softmax mass lands on ids no tokenizer can produce."""
    path = tiny.causal_lm(tmp_path_factory.mktemp("lm") / "padded", seed=6, layers=1, hidden=8,
                          words=tiny.big_vocabulary(QWEN_IDS), head_rows=QWEN_ROWS)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[QWEN_IDS:] = 4 * head[:QWEN_ROWS - QWEN_IDS]
    model.save_pretrained(path)
    return path


def _runner(path, **lm):
    config = teacher_config(name="t", model=str(path), kind="causal-lm", max_length=16, batch_size=4,
                           lm=lm)
    return CausalLMInference(config, path)


def _full_log_softmax(path, texts):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.cat([torch.log_softmax(model(tok([t], return_tensors="pt")["input_ids"]).logits[0], -1)
                          for t in texts])


def test_padded_rows_are_never_stored_or_drawn_and_their_mass_is_counted(padded):
    full = _full_log_softmax(padded, TEXTS)
    assert full.shape[1] == QWEN_ROWS
    padded_mass = full[:, QWEN_IDS:].exp().sum(1).numpy()
    assert padded_mass.mean() > 0.05                             # the padded rows matter here
    real = torch.log_softmax(full[:, :QWEN_IDS], -1).numpy()     # the teacher over real ids

    top = _runner(padded, mode="top-k", k=8).run(TEXTS)
    assert top.topk_ids.max() < QWEN_IDS
    order = np.argsort(-real, axis=1)[:, :8]
    np.testing.assert_array_equal(top.topk_ids, order)
    np.testing.assert_allclose(top.topk_logprobs, np.take_along_axis(real, order, 1), atol=1e-4)
    listed = np.exp(top.topk_logprobs).sum(1) + np.exp(top.tail_logmass)
    np.testing.assert_allclose(listed, 1.0, atol=1e-4)           # normalised over real ids only
    np.testing.assert_allclose(top.padded_mass, padded_mass, rtol=1e-4)

    draws = _runner(padded, mode="sampled", samples=255).run(TEXTS)
    assert draws.draw_ids.max() < QWEN_IDS and draws.draw_counts.sum() == 255 * len(full)


def test_a_head_smaller_than_its_tokenizer_is_refused(tmp_path):
    path = tiny.causal_lm(tmp_path / "short", layers=1, hidden=8, head_rows=len(tiny.WORDS))
    with pytest.raises(ConfigError, match=rf"teachers\[t\] \({path}\): its output head has "
                                          rf"{len(tiny.WORDS)} rows but its tokenizer has "
                                          rf"{len(tiny.WORDS) + 5} token ids"):
        _runner(path, mode="top-k", k=4)


@pytest.mark.usefixtures("prefect")
def test_padded_teacher_and_student_cache_inspect_and_train_on_real_ids(padded, tmp_path):
    """The teacher is padded; one student keeps the padded head, another has none (the same
    tokenizer): both are accepted, and the cache reports the mass on the padded rows."""
    unpadded = tiny.causal_lm(tmp_path / "plain", seed=7, layers=1, hidden=8,
                              words=tiny.big_vocabulary(QWEN_IDS))
    tiny.write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in tiny.sentences(16, seed=4)])
    for name, student in {"padded": {"from_teacher": "q", "layers": 1},
                          "plain": {"model": str(unpadded)}}.items():
        raw = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 8},
               "teachers": [{"name": "q", "model": str(padded), "kind": "causal-lm",
                             "max_length": 16, "batch_size": 8, "lm": {"mode": "top-k", "k": 8}}],
               "student": student,
               "train": {"method": "mean", "epochs": 1, "batch_size": 8, "lr": 1e-3,
                         "warmup_ratio": 0.0, "output": f"run-{name}"}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        cache_teachers(str(path))
        report = train(load_config(path))
        assert report["finished"] and report["vocab_size"] == QWEN_IDS
        assert np.isfinite(report["eval"]["kl_to_teacher"])

    cache = Cache(tmp_path / "cache")
    (manifest,) = cache.manifests()
    assert manifest.settings["vocab_size"] == QWEN_IDS and manifest.settings["head_rows"] == QWEN_ROWS
    assert manifest.schema.field("topk_ids").type == pa.list_(pa.list_(pa.uint32(), 8))
    stored = np.concatenate([np.concatenate(cache.read_shard(manifest.teacher_id, e)
                                            .column("topk_ids").to_pylist()) for e in manifest.shards])
    assert stored.max() < QWEN_IDS
    (teacher,) = inspect_cache(cache)["teachers"]
    head = teacher["padded_head"]
    assert head["padded_rows"] == QWEN_ROWS - QWEN_IDS
    assert 0.05 < head["mean_mass"] <= head["max_mass"] < 1
    json.dumps(teacher)                                          # JSON-ready


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import torch
    from distill.pipeline.config import teacher_config
    from distill.pipeline.kinds.causal_lm.inference import CausalLMInference

    torch.set_num_threads(1)
    path, mode = Path(sys.argv[1]), sys.argv[2]
    lm = {"mode": "top-k", "k": 64} if mode == "top-k" else {"mode": "sampled", "samples": 32}
    config = teacher_config(name="t", model=str(path), kind="causal-lm", max_length=512,
                           batch_size=8, lm=lm)
    runner = CausalLMInference(config, path)
    texts = [" ".join(["cat", "dog", "w7", "river"][(i + j) % 4] for j in range(600)) for i in range(8)]
    def rss():
        return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS"))) * 1024
    before = rss()
    out = runner.run(texts)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"tokens": int(out.lengths.sum()), "above": peak - before}))
""")


@pytest.mark.slow
def test_a_262k_vocabulary_at_batch_8_x_512_never_builds_the_dense_tensor(tmp_path):
    """Peak RSS while caching 8 x 512 tokens at top-64, above the RSS with the model loaded: the
    dense batch x length x vocabulary float32 logits alone would be 4 GiB; the chunked head needs
    a few of its 64-position chunks (64 MiB each). Sampled mode shares the chunks (it measured
    198 MiB the same way; left out here because it costs another minute)."""
    vocab = 262_144
    path = tiny.causal_lm(tmp_path / "gemma-sized", layers=1, hidden=8, max_length=512,
                          words=tiny.big_vocabulary(vocab))
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), "top-k"], capture_output=True,
                         text=True, timeout=600, cwd=Path(__file__).parent)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    dense = 8 * 512 * vocab * 4
    assert result["tokens"] == 8 * 512
    # Alone this measures ~175 MiB; after the file's other tests in the same pytest session it
    # measured 618-829 MiB (in a fresh subprocess all the same: not explained yet). Either is far
    # from the 4 GiB the dense tensor alone would take, which is what this test is about.
    assert result["above"] < dense / 4, f"{result['above'] / 2 ** 20:.0f} MiB above the model"
