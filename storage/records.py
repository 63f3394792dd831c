"""The JSON records of a cache: corpus plans, teacher manifests and shard entries.

They are pydantic models so a damaged or foreign JSON file fails with the file name and the
field, not with a KeyError deep in a reader.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
        try:
            return cls.model_validate(json.loads(data))
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
    columns: dict[str, str]
    shards: list[ShardEntry] = []
    complete: bool = False
