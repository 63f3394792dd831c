"""distill: offline teacher caches (Arrow, Prefect) and label-free ensemble distillation.

The four parts install under this one name: `distill.storage` (the cache format),
`distill.inspection` (reports over a cache), `distill.pipeline` (teachers, methods, training)
and `distill.flows` (Prefect flows and the `distill` command line).
"""
