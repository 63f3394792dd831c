"""Teacher kinds: what a teacher is decides how it runs, what its cache holds and how a student
learns from it. Each kind is one package here and one entry of `KINDS`:

  classification/  sequence classifiers, single-score relevance and regression teachers, pair
                   inputs (cross-encoders, NLI-style pair classifiers)
  causal_lm/       causal LMs, cached as sparse next-token targets
  prompt/          our own continual prompt-mode students used as teachers: cached like a
                   classifier plus each row's prompt vector; trained from like a classifier

A `Kind` names its parts by import path ("module:attribute"), imported only when used, so config
checks and pre-flight stay free of torch. Its methods are found, not listed: every module of its
`methods` package that defines a subclass of its `method_base` with a `name` is registered under
(kind, name) (`methods`, `make_method`), so a new method is one file.

Adding a kind: a package here (cache writer, inference, stream, methods, losses, evaluation,
training recipe), one `KINDS` entry, one config class in the teacher union of
pipeline/config.py, its backends in pipeline/backends.py and the torch-free summary of its
cache in inspection/.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from distill.pipeline.continual.files import has_prompt_pool
from distill.pipeline.errors import ConfigError
from distill.pipeline.folders import resolve_model_dir

if TYPE_CHECKING:
    from distill.pipeline.config import TeacherConfig


def imported(path: str):
    """The attribute a "module:attribute" path names."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Kind:
    name: str          # as the config's `kind` and the manifests' settings say it
    title: str         # how messages name one teacher of it
    cache: str         # its TeacherCache subclass (pipeline/caching.py)
    recipe: str        # (config, aligned caches, method, accelerator) -> pipeline.recipe.Recipe
    methods: str       # the package holding its methods, one module each
    method_base: str   # the class each of its methods subclasses
    eval_always: bool = False   # its students are scored on the `eval` cache in every mode
    prompts: bool = False       # its caches carry prompt vectors (continual students map them)


_CLASSIFIER = "distill.pipeline.kinds.classification"
_LM = "distill.pipeline.kinds.causal_lm"

KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("classification", "a classification teacher", f"{_CLASSIFIER}.cache:ClassificationCache",
         f"{_CLASSIFIER}.recipe:classification_recipe", f"{_CLASSIFIER}.methods",
         f"{_CLASSIFIER}.methods.base:Method"),
    Kind("causal-lm", "a causal-lm teacher", f"{_LM}.cache:CausalLMCache", f"{_LM}.recipe:lm_recipe",
         f"{_LM}.methods", f"{_LM}.methods.base:TokenMethod", eval_always=True),
    Kind("prompt", "a prompt-based teacher", "distill.pipeline.kinds.prompt.teacher:PromptTeacherCache",
         f"{_CLASSIFIER}.recipe:classification_recipe", f"{_CLASSIFIER}.methods",
         f"{_CLASSIFIER}.methods.base:Method", prompts=True),
)}


def kind_of(config: TeacherConfig, where: str) -> Kind:
    """The kind that caches the teacher: the config's `kind`, except that a classification
    teacher whose folder holds a prompt pool is `prompt` (one of our continual students, which
    is only the model it is together with its prompts; known by its files, so no switch)."""
    if config.kind == "classification" and has_prompt_pool(resolve_model_dir(config.model, where)):
        return KINDS["prompt"]
    return KINDS[config.kind]


def training_kind(teachers: list[TeacherConfig], where: str) -> Kind:
    """The kind a student learns from: one for all teachers (prompt-based teachers train like
    classifiers, which they are declared as)."""
    kinds = {KINDS[t.kind].recipe: KINDS[t.kind] for t in teachers}
    if len(kinds) > 1:
        names = " and ".join(sorted(k.name for k in kinds.values()))
        raise ConfigError(f"{where}: teachers mix {names} kinds; a student learns from one kind, "
                          "so split them into two configs")
    return next(iter(kinds.values()))


@cache
def methods(kind: str) -> dict[str, type]:
    """The methods of `kind` by name: every `method_base` subclass with a `name`, defined in a
    module of the kind's methods package (imports torch)."""
    spec = KINDS[kind]
    base, package = imported(spec.method_base), importlib.import_module(spec.methods)
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{spec.methods}.{info.name}")
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, base) and value.__module__ == module.__name__ and value.name:
                found[value.name] = value
    return dict(sorted(found.items()))


def make_method(kind: str, name: str, temperature: float = 1.0, **options):
    """The method `name` of `kind`, built with its options; an unknown name or option raises
    ValueError that names the choices."""
    known = methods(kind)
    if name not in known:
        elsewhere = any(k != kind and name in methods(k) for k in KINDS)
        what = f"method {name!r} has no form for {kind} teachers" if elsewhere else f"unknown method {name!r}"
        raise ValueError(f"{what}; known methods: {', '.join(known)}")
    return known[name](temperature=temperature, **options)
