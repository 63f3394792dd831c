"""Causal-LM teachers, cached as sparse next-token targets (docs/causal-lm.md): inference with a
memory-bounded head, the cache writer, the token stream (and packing), the token-level methods and
losses, the recipe and the held-out evaluation."""
