"""bench/gpu.sh's inputs, checked without a GPU: the carried wheel set matches pyproject and the
GPU image's package list, the stored teacher configs are the architectures they are named
after, and a teacher without installed weights is built from its config, labelled random."""

from __future__ import annotations

import pytest
import torch
from packaging.requirements import Requirement
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

import tiny
from bench import gpu, gpu_wheels


def test_the_wheel_set_is_what_distill_needs_beyond_the_image():
    image, pins = gpu_wheels.image_packages(), gpu_wheels.locked()
    for text in gpu_wheels.distill_requirements():
        requirement = Requirement(text)
        name = gpu_wheels.normalize(requirement.name)
        if name in image or name in gpu_wheels.NOT_NEEDED:
            assert name not in pins or name in gpu_wheels.CARRIED_ANYWAY, name
            continue
        assert name in pins, f"{name} is needed and not in bench/gpu_wheels.txt: run `lock`"
        assert requirement.specifier.contains(pins[name]), f"{text}: {pins[name]} is locked"
    assert set(gpu_wheels.CARRIED_ANYWAY) <= set(pins)
    assert not set(pins) & set(gpu_wheels.NOT_NEEDED)
    assert {n for n in pins if n in image} == set(gpu_wheels.CARRIED_ANYWAY)


@pytest.mark.parametrize("name, kind, layers, hidden, vocab", [
    ("all-MiniLM-L6-v2", "bert", 6, 384, 30522),
    ("all-mpnet-base-v2", "mpnet", 12, 768, 30527),
    ("SmolLM2-135M-Instruct", "llama", 30, 576, 49152)])
def test_the_stored_configs_are_the_named_architectures(name, kind, layers, hidden, vocab):
    assert name in {t.name for t in gpu.TEACHERS}
    config = AutoConfig.from_pretrained(gpu.CONFIGS / name)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == \
        (kind, layers, hidden, vocab)
    tokenizer = AutoTokenizer.from_pretrained(gpu.CONFIGS / name)
    ids = tokenizer("A domesticated carnivorous mammal that barks.")["input_ids"]
    assert len(ids) > 5 and max(ids) < vocab and tokenizer.unk_token_id not in ids


def test_mpnet_tokenizes_as_minilm_in_mpnets_layout():
    """MPNet's vocabulary is BERT's uncased WordPiece behind <s> <pad> </s> <unk>: the same
    pieces, every id 4 higher, <s> … </s> around them."""
    text = "The dog barked at a passing cyclist."
    bert = AutoTokenizer.from_pretrained(gpu.CONFIGS / "all-MiniLM-L6-v2")(text)["input_ids"]
    mpnet = AutoTokenizer.from_pretrained(gpu.CONFIGS / "all-mpnet-base-v2")(text)["input_ids"]
    assert mpnet[1:-1] == [i + 4 for i in bert[1:-1]] and (mpnet[0], mpnet[-1]) == (0, 2)


def _weights(folder, auto, **head):
    return auto.from_pretrained(folder, **head).state_dict()


@pytest.mark.parametrize("causal_lm", [False, True])
def test_without_installed_weights_the_config_is_built_with_random_weights(tmp_path, monkeypatch,
                                                                          causal_lm):
    stored = tmp_path / "configs" / "tiny"
    if causal_lm:
        tiny.causal_lm(stored, seed=1)
    else:
        tiny.classifier(stored, num_labels=gpu.NUM_LABELS, seed=1)
    monkeypatch.setattr(gpu, "CONFIGS", tmp_path / "configs")
    auto = AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification
    head = {} if causal_lm else {"num_labels": gpu.NUM_LABELS}

    absent = gpu.Teacher("tiny", causal_lm, lambda build: None, "tiny-package")
    folder, weights = gpu.teacher_folder(absent, tmp_path / "random", tmp_path / "build", False)
    assert weights == "random (config of tiny)"
    built = _weights(folder, auto, **head)
    original = _weights(stored, auto, **head)
    assert built.keys() == original.keys()
    body = [k for k in built if "classifier" not in k and built[k].is_floating_point()
            and built[k].std() > 0]
    assert body and not any(torch.equal(built[k], original[k]) for k in body)
    assert causal_lm or AutoConfig.from_pretrained(folder).num_labels == gpu.NUM_LABELS

    installed = gpu.Teacher("tiny", causal_lm, lambda build: stored, "tiny-package")
    folder, weights = gpu.teacher_folder(installed, tmp_path / "pretrained", tmp_path / "build", False)
    assert weights == "pretrained (tiny-package)"
    kept = _weights(folder, auto, **head)
    assert all(torch.equal(kept[k], original[k]) for k in body)
    _, weights = gpu.teacher_folder(installed, tmp_path / "forced", tmp_path / "build", True)
    assert weights == "random (config of tiny)"
