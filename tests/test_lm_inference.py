"""Causal-LM teacher runner on a tiny real Llama: top-k and sampled targets against a plain
full-vocabulary forward, chunking, and deterministic draws."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import distill.pipeline.kinds.causal_lm.inference as lm_runner
import tiny
from distill.pipeline.config import teacher_config
from distill.pipeline.kinds.causal_lm.inference import CausalLMInference, unique_counts

TEXTS = tiny.sentences(23, seed=5, max_words=14)
VOCAB = len(tiny.WORDS) + 5


def _runner(path, **lm):
    config = teacher_config(name="t", model=str(path), kind="causal-lm", max_length=12, batch_size=5,
                           lm=lm)
    return CausalLMInference(config, path)


def _reference(path, texts, temperature=1.0):
    """Per text, one at a time and unpadded: full log-softmax [len, V] and the token ids."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok([text], truncation=True, max_length=12, return_tensors="pt")["input_ids"]
            out.append((ids[0].numpy(), torch.log_softmax(model(ids).logits[0] / temperature, -1).numpy()))
    return out


def _rows(lengths, *arrays):
    edges = np.cumsum(lengths)[:-1]
    return [np.split(a, edges) for a in arrays]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny.causal_lm(tmp_path_factory.mktemp("lm") / "m", seed=4)


def test_top_k_matches_the_full_log_softmax_in_plan_order(model, monkeypatch):
    monkeypatch.setattr(lm_runner, "CHUNK_ELEMENTS", 9 * VOCAB)  # 9 positions: rows cut in pieces
    out = _runner(model, mode="top-k", k=4, temperature=2.0).run(TEXTS)
    reference = _reference(model, TEXTS, temperature=2.0)
    plain = _reference(model, TEXTS)
    assert out.lengths.tolist() == [len(ids) for ids, _ in reference]
    assert out.truncated.tolist() == [len(t.split()) + 2 > 12 for t in TEXTS]
    ids, logprobs, tail, following, tokens = _rows(out.lengths, out.topk_ids, out.topk_logprobs,
                                                   out.tail_logmass, out.next_logprob, out.input_ids)
    for r, (ref_ids, ref) in enumerate(reference):
        np.testing.assert_array_equal(tokens[r], ref_ids)
        order = np.argsort(-ref, axis=1)[:, :4]
        np.testing.assert_array_equal(ids[r], order)
        np.testing.assert_allclose(logprobs[r], np.take_along_axis(ref, order, 1), atol=1e-5)
        rest = ref.copy()
        np.put_along_axis(rest, order, -np.inf, 1)
        np.testing.assert_allclose(tail[r], np.log(np.exp(rest).sum(1)), atol=1e-5)
        # next_logprob is untempered: it is for perplexity
        expected = plain[r][1][np.arange(len(ref_ids) - 1), ref_ids[1:]]
        np.testing.assert_allclose(following[r], np.append(expected, 0.0), atol=1e-5)
    assert out.finite_rows().all()


def test_k_equal_to_the_vocabulary_leaves_no_tail(model):
    out = _runner(model, mode="top-k", k=VOCAB).run(TEXTS[:4])
    assert np.isneginf(out.tail_logmass).all()
    np.testing.assert_allclose(np.exp(out.topk_logprobs).sum(1), 1.0, atol=1e-5)


def test_sampled_draws_are_unique_ids_with_counts_and_follow_the_teacher(model):
    runner = _runner(model, mode="sampled", samples=200, seed=0)
    out = runner.run(TEXTS[:6], seed=3)
    per_token = np.split(np.arange(len(out.draw_ids)), np.cumsum(out.draw_lengths)[:-1])
    for positions in per_token:
        assert (np.diff(out.draw_ids[positions]) > 0).all()     # unique, ascending
        assert out.draw_counts[positions].sum() == 200
    # 200 draws per token: frequencies near the probabilities
    reference = np.concatenate([ref for _, ref in _reference(model, TEXTS[:6])])
    freq = np.zeros_like(reference)
    rows = np.repeat(np.arange(len(out.draw_lengths)), out.draw_lengths)
    freq[rows, out.draw_ids] = out.draw_counts / 200
    assert np.abs(freq - np.exp(reference)).max() < 0.15
    assert np.abs(freq - np.exp(reference)).mean() < 0.02
    # same seed, other batch size: the same draws; another seed: different ones
    other = _runner(model, mode="sampled", samples=200, seed=0)
    other.config = other.config.model_copy(update={"batch_size": 2})
    np.testing.assert_array_equal(other.run(TEXTS[:6], seed=3).draw_ids, out.draw_ids)
    assert not np.array_equal(runner.run(TEXTS[:6], seed=4).draw_counts, out.draw_counts)


def test_unique_counts_by_hand():
    ids, counts, lengths = unique_counts(np.array([[3, 1, 3, 3], [0, 0, 0, 0]]))
    assert ids.tolist() == [1, 3, 0] and counts.tolist() == [1, 3, 4] and lengths.tolist() == [2, 1]
