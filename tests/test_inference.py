"""Classification teacher runner on tiny real BERT models built from configs."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import tiny
from distill.pipeline.config import ClassificationTeacherConfig
from distill.pipeline.kinds.classification.inference import ClassificationInference, projection_matrix

TEXTS = tiny.sentences(37, seed=11, max_words=20)


def _runner(path, **cfg):
    settings = {"name": "t", "model": str(path), "max_length": 12, "batch_size": 5, **cfg}
    return ClassificationInference(ClassificationTeacherConfig(**settings), path)


def _reference_logits(path, texts, max_length=12):
    """One text at a time, no padding at all: what every batched result must equal."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return np.concatenate([model(**tok([t], truncation=True, max_length=max_length,
                                           return_tensors="pt")).logits.numpy() for t in texts])


def test_length_batched_logits_come_back_in_plan_order(tmp_path):
    path = tiny.classifier(tmp_path / "m", num_labels=3)
    out = _runner(path).run(TEXTS)
    assert out.logits.shape == (37, 3) and out.logits.dtype == np.float32
    np.testing.assert_allclose(out.logits, _reference_logits(path, TEXTS), atol=1e-5)
    lengths = [len(t.split()) + 2 for t in TEXTS]
    assert out.truncated.tolist() == [n > 12 for n in lengths]
    assert out.truncated.any() and not out.truncated.all()


def test_single_score_relevance_teacher(tmp_path):
    path = tiny.classifier(tmp_path / "m", num_labels=1)
    out = _runner(path, mc_dropout={"passes": 4}).run(TEXTS[:9])
    assert out.logits.shape == (9, 1) and out.mc_probs.shape == (9, 1)
    assert ((out.mc_probs > 0) & (out.mc_probs < 1)).all()


def test_mc_dropout_statistics(tmp_path):
    path = tiny.classifier(tmp_path / "m", num_labels=4, dropout=0.3)
    runner = _runner(path, mc_dropout={"passes": 8})
    out = runner.run(TEXTS, seed=3)
    np.testing.assert_allclose(out.mc_probs.sum(1), 1, atol=1e-5)
    assert ((out.mc_entropy > 0) & (out.mc_entropy <= 1)).all()
    assert (out.mc_mutual_info > 0).all()  # dropout really was on in the passes
    assert (out.mc_mutual_info <= out.mc_entropy + 1e-6).all()
    # Deterministic for a seed, different for another; eval-mode logits unaffected by MC.
    np.testing.assert_array_equal(runner.run(TEXTS, seed=3).mc_probs, out.mc_probs)
    assert not np.array_equal(runner.run(TEXTS, seed=4).mc_probs, out.mc_probs)
    np.testing.assert_allclose(out.logits, _reference_logits(path, TEXTS), atol=1e-5)


def test_mc_dropout_reaches_attention_dropout(tmp_path):
    """Only attention dropout is on: switching nn.Dropout modules alone would give zero spread."""
    path = tiny.classifier(tmp_path / "m", dropout=0.0)
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(path)
    config.attention_probs_dropout_prob = 0.5
    config.save_pretrained(path)
    out = _runner(path, mc_dropout={"passes": 6}).run(TEXTS[:8])
    assert (out.mc_mutual_info > 1e-6).all()


def test_features_pooled_token_level_and_projected(tmp_path):
    path = tiny.classifier(tmp_path / "m")
    pooled = _runner(path, features={"layer": -1}).run(TEXTS[:6]).features
    assert pooled.shape == (6, 32) and pooled.dtype == np.float16
    tokens = _runner(path, features={"pooling": "token", "layer": 1}).run(TEXTS[:6]).features
    assert [t.shape for t in tokens] == [(min(len(s.split()) + 2, 12), 32) for s in TEXTS[:6]]
    projected = _runner(path, features={"project_to": 8, "seed": 5}).run(TEXTS[:6]).features
    expected = pooled.astype(np.float32) @ projection_matrix(32, 8, 5)
    np.testing.assert_allclose(projected, expected, atol=2e-2)


def test_reduced_precision_stays_close(tmp_path):
    path = tiny.classifier(tmp_path / "m")
    full = _runner(path).run(TEXTS).logits
    half = _runner(path, dtype="bfloat16").run(TEXTS).logits
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, full, atol=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(tmp_path):
    path = tiny.classifier(tmp_path / "m")
    np.testing.assert_allclose(_runner(path, device="cuda").run(TEXTS).logits,
                               _runner(path, device="cpu").run(TEXTS).logits, atol=1e-4)
