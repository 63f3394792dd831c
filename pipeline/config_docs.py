"""docs/config.md, generated from the config models' field descriptions, so the reference
cannot drift from what `pipeline/config.py` accepts (tests/test_docs.py compares them).

Run `python -m distill.pipeline.config_docs > docs/config.md` after changing a field.
Torch-free: it imports only the config models.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Iterator, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from distill.pipeline.config import DistillConfig

INTRO = """\
# Config reference

One YAML file (`distill.yaml` in the examples), validated before anything runs. Unknown keys are
errors; paths are relative to the config file. Changing anything that changes a teacher's
outputs gives a new teacher id, so outputs are never mixed (see
[cache-format.md](cache-format.md#layout)). A section that is left out is off, unless its
default says otherwise; the keys under it apply once it is given.

This page is generated from the field descriptions in `pipeline/config.py`:
`python -m distill.pipeline.config_docs > docs/config.md`.

| key | type | default | meaning |
|---|---|---|---|
"""

BOUNDS = {annotated_types.Ge: ("≥", "ge"), annotated_types.Gt: (">", "gt"),
          annotated_types.Le: ("≤", "le"), annotated_types.Lt: ("<", "lt")}


def rows(model: type[BaseModel] = DistillConfig, prefix: str = "") -> Iterator[tuple[str, ...]]:
    """(key, type, default, meaning) for every field, depth first: a nested section's row comes
    before its keys, and a list of sections (teachers, tasks) is walked as `key[].field`."""
    yield from _rows([model], prefix)


def _rows(models: list[type[BaseModel]], prefix: str) -> Iterator[tuple[str, ...]]:
    """The keys of one section, or of a union of sections tagged by `kind` (the teachers): each
    key once, in the first section's order, those of some kinds only saying which."""
    fields: dict[str, list[tuple[type[BaseModel], FieldInfo]]] = {}
    for model in models:
        for name, field in model.model_fields.items():
            if not field.exclude:
                fields.setdefault(name, []).append((model, field))
    for name, owners in fields.items():
        model, field = owners[0]
        key = f"{prefix}{name}"
        nested, many = _section(field.annotation)
        if many:
            key += "[]"
        meaning = field.description or ""
        if len(owners) < len(models):
            kinds = ", ".join(f"`{_kind(m)}`" for m, _ in owners)
            meaning = f"({kinds} only) {meaning}"
        kind_field = name == "kind" and len(models) > 1
        yield (key, " \\| ".join(f"`{_kind(m)}`" for m in models) if kind_field else _type(field),
               f"`{_kind(models[0])}`" if kind_field else _default(field), meaning)
        if nested:
            yield from _rows(nested, key + ".")


def _kind(model: type[BaseModel]) -> str:
    """The tag of one section of a tagged union: its `kind` literal."""
    return typing.get_args(model.model_fields["kind"].annotation)[0]


def missing_descriptions(model: type[BaseModel] = DistillConfig, prefix: str = "") -> list[str]:
    """Keys without a description (each key of the reference must say what it means)."""
    return [key for key, _, _, meaning in rows(model, prefix) if not meaning.strip()]


def _section(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models a field nests (through `| None`, `list[...]` and a tagged union), and whether
    it is a list."""
    many = typing.get_origin(annotation) is list
    for arg in (typing.get_args(annotation) if many else _members(annotation)):
        models = [m for m in _members(arg) if isinstance(m, type) and issubclass(m, BaseModel)]
        if models:
            return models, many
        if typing.get_origin(arg) is list:
            return _section(arg)
    return [], False


def _members(annotation: Any) -> tuple:
    """The members of a union (an `Annotated` one or its members unwrapped), else itself."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return tuple(m for arg in typing.get_args(annotation) for m in _members(arg))
    return (annotation,)


def _type(field: FieldInfo) -> str:
    text = _name(field.annotation)
    bounds = [f"{BOUNDS[type(m)][0]} {getattr(m, BOUNDS[type(m)][1])}" for m in field.metadata
              if type(m) in BOUNDS]
    if any(isinstance(m, annotated_types.MinLen) for m in field.metadata):
        bounds.append("not empty")
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    members = _members(annotation)
    if all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
        return "section"   # one section, or a union of sections tagged by `kind`
    if len(members) > 1:
        return " or ".join("none" if m is type(None) else _name(m) for m in members)
    origin = typing.get_origin(annotation)
    if origin is list:
        return f"list of {_name(typing.get_args(annotation)[0])}"
    if origin is dict or annotation is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "see its keys" if isinstance(value, BaseModel) else f"`{value}`"
    if field.default is PydanticUndefined:
        return "required"
    if field.default is None:
        return "none"
    value = str(field.default).lower() if isinstance(field.default, bool) else field.default
    return f"`{value}`"


def _cell(text: str) -> str:
    """A table cell: a `|` in the text would end it."""
    return text.replace("|", r"\|")


def markdown() -> str:
    """The whole of docs/config.md."""
    lines = [f"| `{key}` | {kind} | {default} | {_cell(meaning)} |"
             for key, kind, default, meaning in rows()]
    return INTRO + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
