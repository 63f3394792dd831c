"""The cache of a causal-LM teacher: one row per text, token-level sparse targets in it.

Columns (one row per plan row, so shards stay aligned with the plan like every other teacher):
`input_ids list<uint16>` (the teacher's tokens, which the student then trains on: no second
tokenization to drift from the first), `next_logprob list<float16>` (log p of the token that
follows; 0 at the last token), `truncated bool`, and per mode
- top-k: `topk_ids list<fixed_size_list<uint16>[k]>` (most likely first),
  `topk_logprob_codes list<fixed_size_list<uint8>[k]>`, the log-probabilities in 8 bits
  (log p = -code / 16, clipped at 255 / 16 ≈ 16 nats, i.e. p ≈ 1e-7), and `tail_logmass
  list<float16>`, the log of the probability outside the top k (-inf when k is the whole
  vocabulary). A code is off by at most 1/32 nat, far below what leaving out the tail costs
  (bench/lm_cache.py), and half the bytes of float16: at k = 64 that is what keeps a token
  under 200 bytes;
- sampled: `draw_ids list<list<uint16>>` (unique ids drawn at each token, ascending) and
  `draw_counts list<list<uint8>>` (how often each was drawn, summing to `lm.samples`).
Ids are uint32 for vocabularies above 65,536. The vocabulary is the tokenizer's (its largest id
+ 1): rows a padded output head has beyond it are never stored; each shard entry counts the
mass the teacher put on them (`padded_mass`, summed over tokens, and `padded_mass_max`).
Shards are zstd-compressed Arrow IPC: sparse ids and log-probs shrink by a fifth to a half,
unlike dense logits.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from distill.pipeline.caching import TeacherCache
from distill.pipeline.config import ConfigError
from distill.pipeline.kinds.causal_lm.inference import LMShardOutput
from distill.pipeline.kinds.causal_lm.vocab import id_dtype, padded_rows, tokenizer_size, vocab_fingerprint
from distill.storage.columns import fixed_rows, nested
from distill.storage.lm_tokens import CODES_PER_NAT, encode_logprobs


class CausalLMCache(TeacherCache):
    kind = "causal-lm"
    compression = "zstd"

    def describe(self) -> tuple[dict, pa.Schema]:
        from transformers import AutoConfig, AutoTokenizer

        model_dir = self.identity.model_dir
        trusted = {"local_files_only": True, "trust_remote_code": self.config.trust_remote_code}
        head_rows = AutoConfig.from_pretrained(model_dir, **trusted).vocab_size
        tokenizer = AutoTokenizer.from_pretrained(model_dir, **trusted)
        vocab = tokenizer_size(tokenizer)
        padded_rows(head_rows, vocab, f"teachers[{self.config.name}] ({self.config.model})")
        lm = self.config.lm
        if lm.mode == "top-k" and lm.k > vocab:
            raise ConfigError(f"teachers[{self.config.name}].lm.k is {lm.k}, but {self.config.model} "
                              f"has a vocabulary of {vocab} tokens; use k <= {vocab}")
        ids = pa.from_numpy_dtype(id_dtype(vocab))
        fields = [("sample_id", pa.int64()), ("input_ids", pa.list_(ids)), ("truncated", pa.bool_()),
                  ("next_logprob", pa.list_(pa.float16()))]
        if lm.mode == "top-k":
            fields += [("topk_ids", pa.list_(pa.list_(ids, lm.k))),
                       ("topk_logprob_codes", pa.list_(pa.list_(pa.uint8(), lm.k))),
                       ("tail_logmass", pa.list_(pa.float16()))]
        else:
            fields += [("draw_ids", pa.list_(pa.list_(ids))), ("draw_counts", pa.list_(pa.list_(pa.uint8())))]
        settings = {"vocab_size": vocab, "head_rows": head_rows, "vocab_sha256": vocab_fingerprint(tokenizer)}
        if lm.mode == "top-k":
            settings["topk_logprob_codes"] = f"log p = -code / {CODES_PER_NAT}"
        return settings, pa.schema(fields)

    def seed_base(self) -> int:
        return self.config.lm.seed

    def shard_counts(self, out: LMShardOutput, valid: np.ndarray) -> dict:
        mass = out.padded_mass[np.repeat(valid, out.lengths)].astype(np.float64)
        return {"padded_mass": float(mass.sum()), "padded_mass_max": float(mass.max(initial=0.0))}

    def columns(self, out: LMShardOutput, valid: np.ndarray) -> dict[str, pa.Array]:
        """Rows whose distribution was not finite (on_nonfinite: skip) keep their tokens but
        hold null targets."""
        ids = id_dtype(self.inference.vocab_size)
        keep = np.repeat(valid, out.lengths)
        lengths = np.where(valid, out.lengths, 0)
        columns = {"input_ids": nested(out.input_ids.astype(ids), out.lengths),
                   "truncated": pa.array(out.truncated),
                   "next_logprob": nested(out.next_logprob[keep].astype(np.float16), lengths, valid)}
        if self.config.lm.mode == "top-k":
            columns["topk_ids"] = nested(fixed_rows(out.topk_ids[keep].astype(ids)), lengths, valid)
            columns["topk_logprob_codes"] = nested(fixed_rows(encode_logprobs(out.topk_logprobs[keep])),
                                                   lengths, valid)
            columns["tail_logmass"] = nested(out.tail_logmass[keep].astype(np.float16), lengths, valid)
        else:
            per_token = np.repeat(keep, out.draw_lengths)
            draws = nested(out.draw_ids[per_token].astype(ids), out.draw_lengths[keep])
            counts = nested(out.draw_counts[per_token].astype(np.uint8), out.draw_lengths[keep])
            columns["draw_ids"] = nested(draws, lengths, valid)
            columns["draw_counts"] = nested(counts, lengths, valid)
        return columns
