"""Presenting an inspect report (storage/inspect.py): tables, PNG plots, one HTML file, SQL.

Imports storage, numpy, matplotlib and duckdb only, never torch, transformers or Prefect, so
all of `distill inspect` works from the base install.
"""
