"""The JSON records of a cache: corpus plans, teacher manifests and shard entries.

They are pydantic models so a damaged or foreign JSON file fails with the file name and the
field, not with a KeyError deep in a reader.
"""

from __future__ import annotations

import base64
import json
from functools import cached_property
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distill.storage import FORMAT_VERSION

# Names read from these records become paths under the cache root, so they are plain names:
# no separators, no `..`, nothing absolute (a hand-edited manifest cannot point outside).
FileName = Annotated[str, Field(pattern=r"^(shard|text)-\d{5}\.arrow$")]
Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> bytes:
        return (self.model_dump_json(indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes | str, source: str):
        """The record in `data`. A versioned record (a plan, a manifest) of another cache
        format is refused before its fields are read (`OtherFormat`): the same field can mean
        something else in another format, and reading it anyway is how a reader goes wrong
        silently."""
        try:
            raw = json.loads(data)
            if "format_version" in cls.model_fields and isinstance(raw, dict) \
                    and raw.get("format_version") != FORMAT_VERSION:
                raise OtherFormat(source, raw.get("format_version"))
            return cls.model_validate(raw)
        except (ValueError, ValidationError) as e:
            raise CacheError(f"{source}: not a valid {cls.__name__} ({_one_line(e)}). "
                             "Delete it and re-run `distill cache` to rebuild it.") from e


def _one_line(error: ValueError) -> str:
    """The error on one line, as every user error is: pydantic's own message spans several
    (count, field, message, input, link), so it is said as `field: message; ...`."""
    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}"
                         for e in error.errors())
    return " ".join(str(error).split())


class CacheError(RuntimeError):
    """Anything wrong with a cache; the message names the file and what to do."""


class OtherFormat(CacheError):
    """A plan or manifest written in another cache format (`FORMAT_VERSION`) than this
    version of distill reads. Caches of another format are never read: listings leave them
    out (`Cache.other_formats` names them) and `distill gc` removes them."""

    def __init__(self, path: str, version: object):
        super().__init__(f"{path}: written in cache format {version}, and this distill reads "
                         f"format {FORMAT_VERSION}; run `distill cache CONFIG` to cache it again "
                         "and `distill gc CONFIG` to remove the old one")
        self.path, self.version = path, version


class DamagedShard(CacheError):
    """A shard file whose bytes are not the ones its entry recorded; `path` names it.

    Readers that know whose shard it is (a teacher, a plan) re-raise it with that name and the
    fix, so the message a user sees says which cache to rebuild."""

    def __init__(self, path: str, problem: str, whose: str = ""):
        super().__init__(f"{path} {problem} (damaged){': ' + whose if whose else ''}")
        self.path, self.problem = path, problem

    def of(self, whose: str) -> "DamagedShard":
        """The same damage, said with whose shard it is and how to repair it."""
        return DamagedShard(self.path, self.problem, whose)


class ShardEntry(Record):
    """One published shard. For teachers, `truncated`/`nonfinite` count rows of note;
    causal-LM teachers with a padded output head record the probability their valid tokens put
    on the padded rows (`padded_mass` summed over tokens, `padded_mass_max` the largest)."""

    index: int
    file: FileName
    rows: int
    bytes: int
    sha256: str
    first_row: int = 0
    truncated: int = 0
    nonfinite: int = 0
    padded_mass: float = 0.0
    padded_mass_max: float = 0.0

    def counts(self) -> dict:
        """What a copy of this shard's entry keeps besides the file: its figures of note."""
        return {"truncated": self.truncated, "nonfinite": self.nonfinite,
                "padded_mass": self.padded_mass, "padded_mass_max": self.padded_mass_max}

    @model_validator(mode="after")
    def _file_is_its_index(self) -> "ShardEntry":
        if int(self.file[-11:-6]) != self.index:
            raise ValueError(f"file {self.file} is not the file of shard {self.index}")
        return self


class SkippedRows(Record):
    """Corpus rows left out of a plan, by reason; `examples` keeps the first few row numbers."""

    empty: int = 0
    non_string: int = 0
    examples: dict[str, list[int]] = {}

    @property
    def total(self) -> int:
        return self.empty + self.non_string


class Plan(Record):
    """Fixed shard boundaries and row order over one corpus; every teacher follows it."""

    plan_id: Id
    format_version: int
    source: str
    text_column: str
    fingerprint: str
    rows_per_shard: int
    rows: int
    skipped: SkippedRows
    shards: list[ShardEntry]
    pair_column: str | None = None      # pair corpora: text shards also hold `pair` and `group`
    group_column: str | None = None
    groups: int | None = None
    single_candidate_groups: int | None = None

    @property
    def pairs(self) -> bool:
        return self.pair_column is not None

    def to_json(self) -> bytes:
        """Single-text plans leave the pair fields out: their plan.json stays what it was."""
        unset = {k for k in ("pair_column", "group_column", "groups", "single_candidate_groups")
                 if getattr(self, k) is None}
        return (self.model_dump_json(indent=2, exclude=unset) + "\n").encode()


class TeacherManifest(Record):
    """What a teacher cache holds and everything that produced it.

    `shards` is filled when the cache is finalized; while a run is in progress, published
    shards are the `shard-NNNNN.json` entries next to their `.arrow` files.
    """

    teacher_id: Id
    name: str
    plan_id: Id
    format_version: int
    code_version: str
    fingerprint: dict[str, str]
    settings: dict[str, Any]
    arrow_schema: str               # the shards' Arrow schema, IPC-serialized, base64
    shards: list[ShardEntry] = []
    complete: bool = False

    # The column types are the Arrow schema itself, in Arrow's own serialization (as Parquet
    # keeps it under `ARROW:schema`), so readers get structured types (a feature width is
    # `schema.field("features").type.list_size`), never a type name parsed back from a string.

    @staticmethod
    def encode_schema(schema: pa.Schema) -> str:
        return base64.b64encode(schema.serialize().to_pybytes()).decode()

    @cached_property
    def schema(self) -> pa.Schema:
        """The Arrow schema every shard of this cache has."""
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.arrow_schema)))

    @property
    def columns(self) -> dict[str, str]:
        """Column name -> Arrow type, as text (for people: reports and artifacts)."""
        return {f.name: str(f.type) for f in self.schema}
