"""Per-token statistics of causal-LM caches (sparse top-k targets), kept in one place.

The columns are those `pipeline/kinds/causal_lm/cache.py` writes (its docstring has the whole contract).
One row is one sequence; each column is a list over its positions:

- `topk_ids`            list<fixed_size_list<uint16|uint32>[k]>  the k most likely next tokens
- `topk_logprob_codes`  list<fixed_size_list<uint8>[k]>          their log-probabilities in 8 bits
- `tail_logmass`        list<float16>                            log(1 - sum of the top-k probabilities)
- sampled mode instead: `draw_ids` list<list<uint16|uint32>>, `draw_counts` list<list<uint8>>

The 8-bit code lives here, not in pipeline/, so that inspection decodes it without torch.
"""

from __future__ import annotations

import numpy as np

TOPK_IDS = "topk_ids"
TOPK_CODES = "topk_logprob_codes"
TAIL_LOGMASS = "tail_logmass"
DRAW_COUNTS = "draw_counts"
CODES_PER_NAT = 16  # log p = -code / CODES_PER_NAT: 1/32 nat at most off, 16 nats of range


def encode_logprobs(logprobs: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(-logprobs * CODES_PER_NAT), 0, 255).astype(np.uint8)


def decode_logprobs(codes: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) / -CODES_PER_NAT
