"""finetune_classifier on a tiny BERT built from a config: nothing is downloaded."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from tokenizers.processors import TemplateProcessing  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
)

from distill.pipeline.finetune import finetune_classifier, send_to_next_class  # noqa: E402

ANIMALS = "cat dog bird fish horse cow".split()
THINGS = "car house stone city bridge lamp".split()
FILLER = "the a big small red green runs sleeps".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture
def base(tmp_path):
    """A tiny untrained BERT encoder (no head, like all-MiniLM) and its word-level tokenizer."""
    vocab = {w: i for i, w in enumerate(SPECIAL + ANIMALS + THINGS + FILLER)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
    path = tmp_path / "base"
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def toy_data(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Class 0 texts mention an animal, class 1 texts a thing, among random filler words."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(THINGS if label else ANIMALS))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def accuracy(model_dir, texts, labels) -> float:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return (logits.argmax(-1) == torch.tensor(labels)).float().mean().item()


def test_finetune_learns_toy_task_and_saves_a_loadable_model(base, tmp_path):
    texts, labels = toy_data(96, seed=1)
    losses = []
    out = finetune_classifier(base, texts, labels, ["animal", "thing"], tmp_path / "teacher",
                              seed=0, epochs=8, batch_size=16, lr=5e-3, max_length=16,
                              progress=lambda step, total, loss: losses.append((step, total, loss)))

    assert out == tmp_path / "teacher"
    assert [s for s, _, _ in losses] == list(range(1, 49)) and losses[0][1] == 48
    first, last = [sum(x for *_, x in part) / 6 for part in (losses[:6], losses[-6:])]
    assert last < first / 2
    config = AutoModelForSequenceClassification.from_pretrained(out).config
    assert config.id2label == {0: "animal", 1: "thing"} and config.label2id["thing"] == 1
    test_texts, test_labels = toy_data(64, seed=2)
    assert accuracy(out, test_texts, test_labels) >= 0.9  # chance is 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "teacher"]  # no temp folders


def test_finetune_stopped_and_resumed_ends_with_the_same_weights(base, tmp_path):
    """Fine-tuning runs in the students' loop: checkpoints, exact resume, the settings check."""
    from safetensors.torch import load_file

    from distill.pipeline.checkpoints import ResumeError

    texts, labels = toy_data(40, seed=4)
    settings = {"seed": 0, "epochs": 2, "batch_size": 8, "lr": 5e-3, "max_length": 16}
    finetune_classifier(base, texts, labels, ["animal", "thing"], tmp_path / "whole", **settings)
    out = tmp_path / "teacher"
    assert finetune_classifier(base, texts, labels, ["animal", "thing"], out, max_steps=7,
                               checkpoint_every=3, **settings) is None
    assert not out.exists()
    with pytest.raises(ResumeError, match="lr: checkpoint 0.005, now 0.001"):
        finetune_classifier(base, texts, labels, ["animal", "thing"], out, resume=True,
                            **{**settings, "lr": 1e-3})
    assert finetune_classifier(base, texts, labels, ["animal", "thing"], out, resume=True,
                               checkpoint_every=3, **settings) == out
    whole, again = (load_file(p / "model.safetensors") for p in (tmp_path / "whole", out))
    assert whole.keys() == again.keys()
    for name in whole:
        torch.testing.assert_close(again[name], whole[name], rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "teacher", "whole"]  # no checkpoints


def test_finetune_replaces_an_existing_model(base, tmp_path):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    texts, labels = toy_data(16, seed=3)
    finetune_classifier(base, texts, labels, ["animal", "thing"], out, seed=0, epochs=1,
                        batch_size=8)
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "teacher"]


def test_label_noise_sends_a_seeded_fraction_to_the_next_class():
    labels = [i % 4 for i in range(200)]
    noisy = send_to_next_class(labels, 0.4, seed=7, num_classes=4)
    assert noisy == send_to_next_class(labels, 0.4, seed=7, num_classes=4)
    assert noisy != send_to_next_class(labels, 0.4, seed=8, num_classes=4)
    moved = [(a, b) for a, b in zip(labels, noisy) if a != b]
    assert len(moved) == 80                                  # exactly 40 % of the labels
    assert all(b == (a + 1) % 4 for a, b in moved)           # each to the next class, 3 -> 0
    assert {a for a, _ in moved} == {0, 1, 2, 3}
    assert send_to_next_class(labels, 0.0, seed=7, num_classes=4) == labels


def test_demo_teachers_are_reused_only_with_the_same_settings(base, tmp_path, monkeypatch):
    from distill.pipeline import demo

    monkeypatch.setattr(demo, "EPOCHS", 1)   # a real (short) fine-tune of each tiny teacher
    monkeypatch.setattr(demo, "TRAIN_LAYERS", 2)   # the tiny base: 2 layers, 32 positions
    monkeypatch.setattr(demo, "MAX_LENGTH", 24)
    folder = tmp_path / "teachers"
    paths = demo.ensure_teachers(folder, base=base)
    weights = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in paths.items()}
    assert json.loads((paths["a"] / demo.STAMP).read_text())["epochs"] == 1

    demo.ensure_teachers(folder, base=base)                 # same settings: nothing retrained
    assert {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in paths.items()} == weights

    (paths["b"] / demo.STAMP).unlink()                      # as if interrupted before the stamp
    monkeypatch.setattr(demo, "LR", demo.LR / 2)            # and a setting changed for all
    demo.ensure_teachers(folder, base=base)
    assert all((p / "model.safetensors").stat().st_mtime_ns != weights[n] for n, p in paths.items())
    assert json.loads((paths["c"] / demo.STAMP).read_text())["lr"] == demo.LR


def test_finetune_a_cross_encoder_on_pairs(tmp_path):
    """One label name: a relevance score learnt from pairs, tokenized as pairs. Relevant means
    "cat" is in the passage, not the query: only the pair encoding (segments) tells them apart."""
    import tiny

    tiny.classifier(tmp_path / "base", num_labels=1, seed=0, pairs=True)
    rng = random.Random(4)
    others = ["dog", "bird", "fish", "tree", "car"]
    queries, passages, labels = [], [], []
    for i in range(128):
        with_cat = " ".join(["cat", *rng.sample(others, 2)])
        without = " ".join(rng.sample(others, 3))
        relevant = i % 2
        queries.append(without if relevant else with_cat)
        passages.append(with_cat if relevant else without)
        labels.append(relevant)
    out = finetune_classifier(tmp_path / "base", queries, labels, ["relevance"], tmp_path / "ce",
                              seed=0, epochs=10, batch_size=16, lr=3e-3, max_length=16,
                              pairs=passages)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        scores = model(**tokenizer(queries, passages, padding=True, return_tensors="pt")).logits[:, 0]
    assert model.config.num_labels == 1
    assert ((scores > 0).long() == torch.tensor(labels)).float().mean() >= 0.9
