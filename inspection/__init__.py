"""What is in a cache and how to show it: the inspect report's maths (report.py: coverage,
confidence, agreement, accuracy against gold labels; summaries.py: histograms and the one ECE;
tokens.py: causal-LM token statistics) and its presentations (tables, PNG plots, one HTML file,
SQL).

Imports storage, numpy, matplotlib and duckdb only, never torch, transformers or Prefect, so
all of `distill inspect` works from the base install. storage/ keeps only what a cache is
(records, shards, reading and writing them); pipeline/ may use the maths here (calibration
reports the same ECE), and nothing here imports pipeline/ or flows/.
"""
