"""Token-level ensemble methods for causal-LM teachers (docs/causal-lm.md): one module each, a
`TokenMethod` subclass (`base.py`) with a `name`, found by the kinds registry."""
