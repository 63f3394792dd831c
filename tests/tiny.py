"""Tiny real Hugging Face models and corpora built from configs: nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = ("the a cat dog bird fish tree flower red green blue big small runs eats sleeps "
         "fast slow water food house car city river stone sun moon star").split()


def tokenizer(words: tuple[str, ...] = WORDS, pairs: bool = False) -> PreTrainedTokenizerFast:
    """A word-level BERT-style tokenizer; `pairs` adds BERT's pair template and token type ids."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing
    pair = {"pair": "[CLS] $A [SEP] $B:1 [SEP]:1"} if pairs else {}
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", **pair, special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    inputs = {"model_input_names": ["input_ids", "token_type_ids", "attention_mask"]} if pairs else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", **inputs)


def classifier(path: Path, num_labels: int = 4, seed: int = 0, layers: int = 2,
               dropout: float = 0.1, nan: bool = False, pairs: bool = False) -> Path:
    """Save a tiny BERT classifier (random weights from `seed`) with its tokenizer (`pairs`:
    one that encodes pairs as BERT does)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                        num_labels=num_labels, hidden_dropout_prob=dropout, initializer_range=0.3,
                        attention_probs_dropout_prob=dropout,
                        id2label={i: f"class{i}" for i in range(num_labels)},
                        label2id={f"class{i}": i for i in range(num_labels)})
    model = BertForSequenceClassification(config)
    if nan:
        with torch.no_grad():
            model.classifier.bias.fill_(float("nan"))
    model.save_pretrained(path)
    tokenizer(pairs=pairs).save_pretrained(path)
    return path


def causal_lm(path: Path, seed: int = 0, layers: int = 3, words: tuple[str, ...] = WORDS,
              head_rows: int | None = None, hidden: int = 32, max_length: int = 64) -> Path:
    """Save a tiny Llama causal LM (random weights from `seed`, peaked enough that top-k lists
    matter) with the tiny tokenizer; other `words` give another vocabulary of the same size.
    `head_rows` above the tokenizer's len(words) + 5 ids gives a padded output head."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=head_rows or len(words) + 5, hidden_size=hidden,
                         intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=max_length, initializer_range=0.3, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer(words).save_pretrained(path)
    return path


def big_vocabulary(size: int) -> tuple[str, ...]:
    """WORDS followed by generated filler words, so that the tiny tokenizer has `size` ids (the
    texts of `sentences` still tokenize to real words)."""
    return (*WORDS, *(f"w{i}" for i in range(size - len(WORDS) - 5)))


def sentences(n: int, seed: int = 0, min_words: int = 2, max_words: int = 12) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
            for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
