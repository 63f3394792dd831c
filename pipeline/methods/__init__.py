"""Label-free ensemble methods behind one registry (docs/methods.md).

Adding a method: one module with a `Method` subclass that sets `name`, plus its entry below.
"""

from __future__ import annotations

from distill.pipeline.methods.base import Method, MethodOutput, TeacherBatch
from distill.pipeline.methods.govern import Govern
from distill.pipeline.methods.max_confidence import MaxConfidence
from distill.pipeline.methods.mean import Mean
from distill.pipeline.methods.median import Median
from distill.pipeline.methods.muka import Muka
from distill.pipeline.methods.single import SingleTeacher

REGISTRY: dict[str, type[Method]] = {method.name: method for method in (
    Mean,
    Median,
    MaxConfidence,
    SingleTeacher,
    Govern,
    Muka,
)}

__all__ = ["REGISTRY", "Method", "MethodOutput", "TeacherBatch", "make_method"]


def make_method(name: str, temperature: float = 1.0, **options) -> Method:
    """The method registered as `name`; unknown names and options raise ValueError."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](temperature=temperature, **options)
