"""distill: offline teacher caches (Arrow, Prefect) and label-free ensemble distillation.

The four parts install under this one name: `distill.storage` (the cache format),
`distill.inspection` (reports over a cache), `distill.pipeline` (teachers, methods, training)
and `distill.flows` (Prefect flows and the `distill` command line).

The Python API (`distill.api`) is importable from here: `distill.load_config`, `distill.cache`,
`distill.train`, `distill.teacher_table`, `distill.teacher_dataset`, `distill.inspect`. They are
looked up on first use, so `import distill.storage` stays free of torch and Prefect.
"""

API = ("load_config", "cache", "train", "teacher_table", "teacher_dataset", "inspect")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from distill import api

        return getattr(api, name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
