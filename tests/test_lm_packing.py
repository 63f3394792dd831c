"""Sequence packing for causal-LM students (`train.pack: true`) on tiny real models: texts packed
into blocks give every token the logits (so the loss) of the unpacked batch, a packed run trains,
and students that would attend across packed texts, or classification students, are refused."""

import numpy as np
import pytest
import torch
import yaml
from transformers import OPTConfig, OPTForCausalLM

import tiny
from distill.flows.caching import cache_teachers
from distill.pipeline.config import ConfigError, load_config
from distill.pipeline.kinds import make_method
from distill.pipeline.kinds.causal_lm.evaluate import student_logits
from distill.pipeline.kinds.causal_lm.stream import TokenStream, pack_rows
from distill.pipeline.student import build_lm_student
from distill.pipeline.trainer import train
from distill.storage.aligned import AlignedCache
from distill.storage.cache import Cache

pytestmark = pytest.mark.usefixtures("prefect")


def test_first_fit_decreasing_by_hand():
    lengths = np.array([3, 5, 2])
    packed = pack_rows(np.arange(10) + 100, lengths, block=6)
    # longest first: text 1 (5) opens block 0; text 0 (3) does not fit there, opens block 1;
    # text 2 (2) fits behind it. Blocks are 5 wide; block 1's last slot is padding.
    assert packed.input_ids.tolist() == [[103, 104, 105, 106, 107], [100, 101, 102, 108, 109]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert packed.index.tolist() == [5, 6, 7, 0, 1, 2, 3, 4, 8, 9]
    assert packed.padding == 0.0
    wide = pack_rows(np.arange(4), np.array([1, 3]), block=8)
    assert wide.input_ids.shape == (1, 4) and wide.position_ids.tolist() == [[0, 1, 2, 0]]
    alone = pack_rows(np.arange(6), np.array([4, 2]), block=3)        # a text longer than a block
    assert alone.input_ids.shape == (2, 4) and alone.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    assert alone.padding == pytest.approx(2 / 8)                       # padding is its own text


def _project(root, student=None, **train):
    tiny.write_jsonl(root / "corpus.jsonl", [{"text": t} for t in tiny.sentences(40, seed=2)])
    tiny.causal_lm(root / "lm", seed=1)
    raw = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 20},
           "teachers": [{"name": "a", "model": "lm", "kind": "causal-lm", "max_length": 16,
                         "lm": {"mode": "top-k", "k": 6}}],
           "student": student or {"from_teacher": "a", "layers": 2, "max_length": 32},
           "train": {"method": "mean", "epochs": 1, "batch_size": 10, "lr": 1e-3,
                     "warmup_ratio": 0.0, "output": "run", "pack": True, **train}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    cache_teachers(str(path))
    return path


def test_packed_tokens_get_the_unpacked_logits_and_loss(tmp_path):
    _project(tmp_path)
    cache = Cache(tmp_path / "cache")
    aligned = AlignedCache(cache, [m.teacher_id for m in cache.manifests()])
    model, _ = build_lm_student(tmp_path / "lm", layers=2)
    model.eval()
    method = make_method("causal-lm", "mean")
    plain = TokenStream(aligned, 10, shuffle=False).epoch(0)
    packed = TokenStream(aligned, 10, pack=32, shuffle=False).epoch(0)
    padding = []
    for a, b in zip(plain, packed, strict=True):
        assert b.packed is not None and b.packed.input_ids.shape[1] <= 32
        assert b.packed.input_ids.shape[0] < a.input_ids.shape[0]       # fewer rows to compute
        with torch.no_grad():
            la, lb = student_logits(model, a), student_logits(model, b)
        torch.testing.assert_close(lb, la, atol=1e-5, rtol=1e-5)        # every token, in order
        per_token = [[float(method(logits[i:i + 1], [t.to("cpu") for t in _at(batch, i)]).loss)
                      for i in range(len(logits))] for logits, batch in ((la, a), (lb, b))]
        np.testing.assert_allclose(per_token[1], per_token[0], rtol=1e-5, atol=1e-6)
        padding.append((1 - a.attention_mask.float().mean().item(), b.packed.padding))
    assert np.mean([p for _, p in padding]) < np.mean([u for u, _ in padding])


def _at(batch, i):
    """Each teacher's targets at token i alone."""
    from dataclasses import replace
    return [replace(t, ids=t.ids[i:i + 1], probs=t.probs[i:i + 1], tail=t.tail[i:i + 1],
                    valid=t.valid[i:i + 1]) for t in batch.teachers]


def test_a_packed_run_trains(tmp_path):
    report = train(load_config(_project(tmp_path)))
    assert report["finished"]
    assert report["eval"]["kl_to_teacher"] < report["eval"]["kl_to_teacher_before"]


def test_students_that_attend_across_packed_texts_are_refused(tmp_path):
    """OPT ignores restarting positions (its mask comes from the attention mask alone)."""
    opt = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=len(tiny.WORDS) + 5, hidden_size=16, num_hidden_layers=1,
                             num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16,
                             max_position_embeddings=64)).save_pretrained(opt)
    tiny.tokenizer().save_pretrained(opt)
    path = _project(tmp_path, student={"model": str(opt)})
    with pytest.raises(ConfigError, match=r"train.pack: the student \(OPTForCausalLM\) lets packed "
                                          r"texts attend to each other.*set train.pack: false"):
        train(load_config(path))


def test_packing_is_refused_for_classification_students(tmp_path):
    tiny.write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in tiny.sentences(8)])
    tiny.classifier(tmp_path / "clf")
    raw = {"cache": "cache", "corpus": {"path": "corpus.jsonl"},
           "teachers": [{"name": "c", "model": "clf"}], "student": {"from_teacher": "c", "layers": 1},
           "train": {"pack": True, "output": "run"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    cache_teachers(str(path))
    with pytest.raises(ConfigError, match="train.pack packs token sequences for causal-LM students"):
        train(load_config(path))
