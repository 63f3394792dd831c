"""Prompt-based teachers: our own continual prompt-mode students, run with their prompt pool and
cached with their prompt vectors (docs/continual.md); trained from like classifiers."""
