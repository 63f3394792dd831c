"""Continual distillation (CDL-Prompt, arXiv 2407.13911): tasks learnt in order from per-task caches."""
