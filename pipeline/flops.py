"""Analytic forward FLOPs of a transformer encoder classifier (for student / ensemble ratios).

Per layer and sequence of n tokens, hidden H, feed-forward width I:
  projections 2·n·4H² (Q, K, V, output) + feed-forward 2·n·2HI + attention scores and
  mixing 2·2·n²·H; plus the pooler/classifier head, 2·H·(H + C). Embedding look-ups are free.
"""

from __future__ import annotations


def encoder_flops(config, tokens: int) -> int:
    h, layers = config.hidden_size, config.num_hidden_layers
    ffn = getattr(config, "intermediate_size", 4 * h)
    per_layer = 2 * tokens * 4 * h * h + 2 * tokens * 2 * h * ffn + 4 * tokens * tokens * h
    return layers * per_layer + 2 * h * (h + config.num_labels)


def flops_ratio(student_config, teacher_configs: list, tokens: int = 32) -> float:
    """Student FLOPs / ensemble FLOPs (every teacher runs on every input)."""
    return encoder_flops(student_config, tokens) / sum(encoder_flops(c, tokens) for c in teacher_configs)
