"""The cache root: where plans and teacher caches live, and what is published there.

```
<root>/corpora/<plan-id>/plan.json, text-00000.arrow, ...
<root>/teachers/<teacher-id>/manifest.json, shard-00000.arrow, shard-00000.json, ...
```
A teacher shard is published when its `.arrow` file and then its `.json` entry (rows, bytes,
sha256) are in place; `manifest.json` gets the full shard list when the last one lands.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow as pa

from distill.storage import FORMAT_VERSION
from distill.storage.fs import is_local, join, publish_bytes, remove_stale_temps, resolve, sha256_file
from distill.storage.records import CacheError, DamagedShard, Plan, ShardEntry, TeacherManifest
from distill.storage.shards import read_table, write_table


@dataclass(frozen=True)
class OtherCache:
    """A plan or teacher cache of another cache format (`Cache.other_formats`)."""

    kind: str        # "plan" or "teacher"
    id: str
    version: object  # the format_version it records
    path: str


def shard_file(index: int) -> str:
    return f"shard-{index:05d}.arrow"


class Cache:
    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.fs, self.root = resolve(location)

    def __repr__(self) -> str:
        return f"Cache({self.location!r})"

    # ---- plans -------------------------------------------------------------------------

    def plan_dir(self, plan_id: str) -> str:
        return join(self.root, "corpora", plan_id)

    def _read(self, path: str, record: type):
        """The record at `path`, or None. One request, not exists-then-read: on an object
        store every call is a round trip, and the file may appear or vanish in between."""
        try:
            return record.from_json(self.fs.cat_file(self.inside(path)), path)
        except FileNotFoundError:
            return None

    def _named(self, found, key: str, value: str, path: str):
        """`found` (or None), after checking that the record is the one its folder names:
        readers build every further path from the record's own ids."""
        if found is not None and getattr(found, key) != value:
            raise CacheError(f"{path} records {key} {getattr(found, key)} where {value} belongs; "
                             "it was moved or edited by hand: delete it and re-run "
                             "`distill cache CONFIG`")
        return found

    def _ids_with(self, folder: str, marker: str) -> list[str]:
        """Names of the sub-folders of `folder` that hold `marker` (i.e. that are finished)."""
        try:
            children = self.fs.ls(join(self.root, folder), detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(p) for p in children if self.fs.exists(join(p, marker)))

    def find_plan(self, plan_id: str) -> Plan | None:
        path = join(self.plan_dir(plan_id), "plan.json")
        return self._named(self._read(path, Plan), "plan_id", plan_id, path)

    def load_plan(self, plan_id: str) -> Plan:
        plan = self.find_plan(plan_id)
        if plan is None:
            raise CacheError(f"{join(self.plan_dir(plan_id), 'plan.json')} does not exist: "
                             "the corpus plan was never built here. Run `distill cache CONFIG`.")
        return plan

    def plan_ids(self) -> list[str]:
        """The plans of this cache format (`other_formats` lists the others)."""
        return self._current_ids("corpora", "plan.json")

    def plans(self) -> list[Plan]:
        """Every plan of this cache format, each file read once."""
        return self._current("corpora", "plan.json", Plan, "plan_id")

    def other_formats(self) -> list[OtherCache]:
        """Plans and teacher caches written in another cache format: never read (their ids are
        never the ones this version computes), listed so that `inspect` names them and
        `distill gc` removes them."""
        return [OtherCache(kind, i, v, path(i))
                for kind, folder, marker, path in (("plan", "corpora", "plan.json", self.plan_dir),
                                                   ("teacher", "teachers", "manifest.json", self.teacher_dir))
                for i, (v, _, _) in self._markers(folder, marker).items() if v != FORMAT_VERSION]

    def _markers(self, folder: str, marker: str) -> dict[str, tuple[object, str, bytes]]:
        """{id: (the format_version its marker records, the marker's path, its bytes)} for the
        finished sub-folders of `folder`, in one request for all markers (object stores fetch
        them concurrently), so listing records reads each file once. A marker that is not JSON
        counts as this format, so that reading it reports the damage and the fix."""
        paths = [self.inside(join(self.root, folder, i, marker)) for i in self._ids_with(folder, marker)]
        found = {}
        for path, data in (self.fs.cat(paths) if paths else {}).items():
            try:
                version = json.loads(data).get("format_version", FORMAT_VERSION)
            except (ValueError, AttributeError):
                version = FORMAT_VERSION
            found[os.path.basename(os.path.dirname(path))] = (version, path, data)
        return dict(sorted(found.items()))

    def _current_ids(self, folder: str, marker: str) -> list[str]:
        return [i for i, (v, _, _) in self._markers(folder, marker).items() if v == FORMAT_VERSION]

    def _current(self, folder: str, marker: str, record: type, key: str) -> list:
        """The records of this cache format under `folder`, parsed from the listing's bytes."""
        return [self._named(record.from_json(data, path), key, i, path)
                for i, (version, path, data) in self._markers(folder, marker).items()
                if version == FORMAT_VERSION]

    def read_text_shard(self, plan: Plan, index: int) -> pa.Table:
        """Plan shard `index`, verified against the sha256 the plan recorded."""
        entry = plan.shards[index]
        try:
            return self._read_verified(self.plan_dir(plan.plan_id), entry)
        except DamagedShard as e:
            raise e.of(f"a text shard of corpus plan {plan.plan_id}; `distill cache CONFIG` "
                       "rewrites it") from e

    def inside(self, path: str) -> str:
        """`path`, after checking that it is a plain file name under the cache root: names
        come from JSON files anyone can edit, so a link (or a name that resolved outside the
        root) is refused rather than followed, and nothing outside the root is ever opened."""
        if is_local(self.fs) and os.path.lexists(path):
            real, root = os.path.realpath(path), os.path.realpath(self.root)
            if os.path.islink(path) or not real.startswith(root + os.sep):
                raise CacheError(f"{path} is a link or lies outside the cache root {self.root}; "
                                 "a cache holds plain files only: remove it and re-run "
                                 "`distill cache CONFIG`")
        return path

    def _read_verified(self, folder: str, entry: ShardEntry) -> pa.Table:
        return read_table(self.fs, self.inside(join(folder, entry.file)), sha256=entry.sha256)

    # ---- teachers ----------------------------------------------------------------------

    def teacher_dir(self, teacher_id: str) -> str:
        return join(self.root, "teachers", teacher_id)

    def teacher_ids(self) -> list[str]:
        """The teacher caches of this cache format (`other_formats` lists the others)."""
        return self._current_ids("teachers", "manifest.json")

    def find_manifest(self, teacher_id: str) -> TeacherManifest | None:
        path = join(self.teacher_dir(teacher_id), "manifest.json")
        return self._named(self._read(path, TeacherManifest), "teacher_id", teacher_id, path)

    def load_manifest(self, teacher_id: str) -> TeacherManifest:
        manifest = self.find_manifest(teacher_id)
        if manifest is None:
            raise CacheError(f"no teacher cache {teacher_id} in {self.location}")
        return manifest

    def manifests(self) -> list[TeacherManifest]:
        """Every teacher cache of this cache format, each manifest read once."""
        return self._current("teachers", "manifest.json", TeacherManifest, "teacher_id")

    def start_teacher(self, manifest: TeacherManifest) -> TeacherManifest:
        """Record a teacher cache before its first shard, or return the one already there. A
        damaged manifest is replaced: it holds nothing that the config and the published shard
        entries do not (`finalize` writes the shard list again)."""
        try:
            existing = self.find_manifest(manifest.teacher_id)
        except CacheError:
            existing = None
        if existing is not None:
            return existing
        publish_bytes(self.fs, join(self.teacher_dir(manifest.teacher_id), "manifest.json"),
                      manifest.to_json())
        return manifest

    def published_shards(self, teacher_id: str, broken: list[str] | None = None) -> dict[int, ShardEntry]:
        """Shards whose entry is recorded (not yet checked against their file). An entry that
        is not valid raises, or, given a `broken` list, is added to it and left out (a writer
        recomputes that shard)."""
        paths = self.fs.glob(join(self.teacher_dir(teacher_id), "shard-*.json"))
        # One call for all of them: object stores fetch the entries concurrently.
        found = self.fs.cat(paths) if paths else {}
        entries = {}
        for path, data in sorted(found.items()):
            try:
                entry = self._named(ShardEntry.from_json(data, path), "file",
                                    os.path.basename(path).replace(".json", ".arrow"), path)
            except CacheError:
                if broken is None:
                    raise
                broken.append(path)
                continue
            entries[entry.index] = entry
        return entries

    def shard_problem(self, teacher_id: str, entry: ShardEntry, checksum: bool = True) -> str | None:
        """Why a published shard cannot be trusted (missing, truncated, corrupt), or None."""
        return self.file_problem(self.teacher_dir(teacher_id), entry, checksum)

    def file_problem(self, folder: str, entry: ShardEntry, checksum: bool = True) -> str | None:
        """Why the file of `entry` in `folder` does not hold what the entry records, or None."""
        path = self.inside(join(folder, entry.file))
        try:
            size = self.fs.size(path)
        except FileNotFoundError:
            return f"{path} is missing"
        if size != entry.bytes:
            return f"{path} has {size} bytes, its entry records {entry.bytes} (truncated?)"
        if checksum and sha256_file(self.fs, path) != entry.sha256:
            return f"{path} does not match its recorded sha256 (corrupt)"
        return None

    def write_shard(self, teacher_id: str, index: int, table: pa.Table,
                    compression: str | None = None, **counts: int | float) -> ShardEntry:
        """Publish one teacher shard: the Arrow file first, then its entry."""
        folder = self.teacher_dir(teacher_id)
        written = write_table(self.fs, join(folder, shard_file(index)), table, compression)
        entry = ShardEntry(index=index, file=shard_file(index), rows=written.rows,
                           bytes=written.bytes, sha256=written.sha256, **counts)
        publish_bytes(self.fs, join(folder, f"shard-{index:05d}.json"), entry.to_json())
        return entry

    def read_shard(self, teacher_id: str, shard: ShardEntry | int) -> pa.Table:
        """A teacher shard (its entry, or its index: then its published entry is looked up),
        verified against the recorded sha256 as it is read (`DamagedShard` if it does not
        match): there is no unverified way to read a shard."""
        entry = shard if isinstance(shard, ShardEntry) else self.shard_entry(teacher_id, shard)
        return self._read_verified(self.teacher_dir(teacher_id), entry)

    def shard_entry(self, teacher_id: str, index: int) -> ShardEntry:
        path = join(self.teacher_dir(teacher_id), f"shard-{index:05d}.json")
        entry = self._read(path, ShardEntry)
        if entry is None:
            raise CacheError(f"{path} does not exist: shard {index} of teacher cache {teacher_id} "
                             "was never published. Run `distill cache CONFIG`.")
        return self._named(entry, "index", index, path)

    def finalize(self, teacher_id: str, plan: Plan) -> TeacherManifest:
        """Write the full shard list into the manifest once every plan shard is published."""
        manifest = self.load_manifest(teacher_id)
        entries = self.published_shards(teacher_id)
        missing = [i for i in range(len(plan.shards)) if i not in entries]
        if missing:
            raise CacheError(f"teacher cache {teacher_id} is missing shards {missing[:10]}; "
                             "re-run `distill cache` to compute them")
        manifest.shards = [entries[i] for i in range(len(plan.shards))]
        manifest.complete = True
        publish_bytes(self.fs, join(self.teacher_dir(teacher_id), "manifest.json"),
                      manifest.to_json())
        remove_stale_temps(self.fs, self.teacher_dir(teacher_id))
        return manifest
