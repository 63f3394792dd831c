"""The token-level recipe for causal-LM teachers, run by the shared loop in `pipeline.trainer`.

The student (typically the teacher cut to a subset of its layers) trains on the teachers' cached
token ids; per token, a token-level method (`mean`, `govern`) combines the teachers' sparse
targets and the bucketed KL (`losses.sparse_kl`) pulls the student towards them, optionally
mixed with cross-entropy on the text (`train.ce_weight`). Teachers and student must share one
vocabulary, checked by fingerprint before any training.
"""

from __future__ import annotations

import torch

from distill.pipeline.caches import open_eval_caches
from distill.pipeline.config import ConfigError, DistillConfig, TrainConfig
from distill.pipeline.kinds import make_method
from distill.pipeline.kinds.causal_lm.evaluate import evaluate_lm, student_logits
from distill.pipeline.kinds.causal_lm.losses import next_token_ce
from distill.pipeline.kinds.causal_lm.stream import TokenBatch, TokenStream
from distill.pipeline.kinds.causal_lm.vocab import (
    check_same_vocabulary,
    padded_rows,
    tokenizer_size,
    vocab_fingerprint,
)
from distill.pipeline.methods import MethodOutput
from distill.pipeline.recipe import Recipe, student_source
from distill.pipeline.student import build_lm_student
from distill.storage.aligned import AlignedCache


def cached_temperature(config: DistillConfig, aligned: AlignedCache) -> float:
    """The one temperature every teacher was cached at; training uses it (a top-k tail and a set
    of draws cannot be re-tempered), so a different explicit `train.temperature` is an error."""
    found = {m.name: m.settings["lm"]["temperature"] for m in aligned.manifests}
    if len(set(found.values())) > 1:
        raise ConfigError(f"{config.source}: causal-LM teachers were cached at different "
                          f"temperatures {found}; cache them all at one teachers[].lm.temperature")
    temperature = next(iter(found.values()))
    train = config.train
    if train is not None and "temperature" in train.model_fields_set and train.temperature != temperature:
        raise ConfigError(f"{config.source}: train.temperature is {train.temperature}, but the "
                          f"causal-LM teachers were cached at lm.temperature {temperature}; sparse "
                          "targets cannot be re-tempered. Remove train.temperature or set it to "
                          f"{temperature} (or re-cache the teachers at the temperature you want).")
    return temperature


def token_loss(model, method, batch: TokenBatch, device, ce_weight: float) -> MethodOutput:
    batch = batch.to(device)
    logits = student_logits(model, batch)
    weights = batch.token_weights
    result = method(logits, batch.teachers, weights)
    if ce_weight:
        ce = next_token_ce(logits, batch.next_ids, batch.has_next, weights)
        result = MethodOutput((1 - ce_weight) * result.loss + ce_weight * ce,
                              {**result.metrics, "kd": result.loss.item(), "ce": ce.item()})
    return result


def check_packing(model, vocab: int, where: str) -> None:
    """Refuse packing for a student that would attend across packed texts: the second of two
    texts must get the same logits alone and packed behind the first (a model whose attention
    ignores restarting positions would let it see the first one)."""
    ids = torch.arange(12) * 7 % vocab
    second = ids[5:]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        alone = model(input_ids=second[None], use_cache=False).logits[0]
        packed = model(input_ids=ids[None], position_ids=torch.cat([torch.arange(5), torch.arange(7)])[None],
                       use_cache=False).logits[0, 5:]
    model.train(was_training)
    if not torch.allclose(alone, packed, atol=1e-4, rtol=1e-4):
        raise ConfigError(f"{where}: the student ({type(model).__name__}) lets packed texts attend "
                          f"to each other (logits differ by up to {(alone - packed).abs().max():.3g}); "
                          "set train.pack: false for it")


def lm_recipe(config: DistillConfig, aligned: AlignedCache, method: str, accelerator) -> Recipe:
    train_cfg = config.train or TrainConfig()
    temperature = cached_temperature(config, aligned)
    source, layers, pick = student_source(config)
    model, tokenizer = build_lm_student(source, layers, pick)
    vocabularies = {f"teacher {m.name}": m.settings for m in aligned.manifests}
    vocab = tokenizer_size(tokenizer)
    padded_rows(model.get_output_embeddings().weight.shape[0], vocab, f"{config.source}: the student")
    vocabularies["the student"] = {"vocab_size": vocab, "vocab_sha256": vocab_fingerprint(tokenizer)}
    check_same_vocabulary(vocabularies, config.source)
    ensemble = make_method("causal-lm", method, temperature, **train_cfg.method_options)
    block = None
    if train_cfg.pack:
        block = config.student.max_length
        check_packing(model, vocab, f"{config.source}: train.pack")
    stream = TokenStream(aligned, train_cfg.batch_size, pack=block, seed=train_cfg.seed,
                         buffer_shards=train_cfg.shuffle_buffer_shards,
                         rank=accelerator.process_index, world=accelerator.num_processes)
    held_out = TokenStream(open_eval_caches(config) if config.eval else aligned,
                           train_cfg.batch_size, shuffle=False)
    before = evaluate_lm(model.eval(), held_out, temperature) if accelerator.is_main_process else {}
    return Recipe(stream, model, tokenizer, [{"params": list(model.parameters()), "lr": train_cfg.lr}],
                  loss=lambda m, batch, device: token_loss(m, ensemble, batch, device, train_cfg.ce_weight),
                  evaluate=lambda student: {**evaluate_lm(student, held_out, temperature),
                                            **{f"{k}_before": v for k, v in before.items()}},
                  report={"vocab_size": vocabularies["the student"]["vocab_size"],
                          "temperature": temperature, "eval_on": "eval" if config.eval else "corpus"})
