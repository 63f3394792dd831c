"""The cache root: where plans and teacher caches live, and what is published there.

```
<root>/corpora/<plan-id>/plan.json, text-00000.arrow, ...
<root>/teachers/<teacher-id>/manifest.json, shard-00000.arrow, shard-00000.json, ...
```
A teacher shard is published when its `.arrow` file and then its `.json` entry (rows, bytes,
sha256) are in place; `manifest.json` gets the full shard list when the last one lands.
"""

from __future__ import annotations

import os

import pyarrow as pa

from distill.storage.fs import join, publish_bytes, remove_stale_temps, resolve, sha256_file
from distill.storage.records import CacheError, Plan, ShardEntry, TeacherManifest
from distill.storage.shards import read_table, write_table


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
            return record.from_json(self.fs.cat_file(path), path)
        except FileNotFoundError:
            return None

    def _ids_with(self, folder: str, marker: str) -> list[str]:
        """Names of the sub-folders of `folder` that hold `marker` (i.e. that are finished)."""
        try:
            children = self.fs.ls(join(self.root, folder), detail=False)
        except FileNotFoundError:
            return []
        return sorted(os.path.basename(p) for p in children if self.fs.exists(join(p, marker)))

    def find_plan(self, plan_id: str) -> Plan | None:
        return self._read(join(self.plan_dir(plan_id), "plan.json"), Plan)

    def load_plan(self, plan_id: str) -> Plan:
        plan = self.find_plan(plan_id)
        if plan is None:
            raise CacheError(f"{join(self.plan_dir(plan_id), 'plan.json')} does not exist: "
                             "the corpus plan was never built here. Run `distill cache CONFIG`.")
        return plan

    def plan_ids(self) -> list[str]:
        return self._ids_with("corpora", "plan.json")

    def read_text_shard(self, plan: Plan, index: int) -> pa.Table:
        return read_table(self.fs, join(self.plan_dir(plan.plan_id), plan.shards[index].file))

    # ---- teachers ----------------------------------------------------------------------

    def teacher_dir(self, teacher_id: str) -> str:
        return join(self.root, "teachers", teacher_id)

    def teacher_ids(self) -> list[str]:
        return self._ids_with("teachers", "manifest.json")

    def find_manifest(self, teacher_id: str) -> TeacherManifest | None:
        return self._read(join(self.teacher_dir(teacher_id), "manifest.json"), TeacherManifest)

    def load_manifest(self, teacher_id: str) -> TeacherManifest:
        manifest = self.find_manifest(teacher_id)
        if manifest is None:
            raise CacheError(f"no teacher cache {teacher_id} in {self.location}")
        return manifest

    def manifests(self) -> list[TeacherManifest]:
        return [self.load_manifest(t) for t in self.teacher_ids()]

    def start_teacher(self, manifest: TeacherManifest) -> TeacherManifest:
        """Record a teacher cache before its first shard, or return the one already there."""
        existing = self.find_manifest(manifest.teacher_id)
        if existing is not None:
            return existing
        publish_bytes(self.fs, join(self.teacher_dir(manifest.teacher_id), "manifest.json"),
                      manifest.to_json())
        return manifest

    def published_shards(self, teacher_id: str) -> dict[int, ShardEntry]:
        """Shards whose entry is recorded (not yet checked against their file)."""
        paths = self.fs.glob(join(self.teacher_dir(teacher_id), "shard-*.json"))
        # One call for all of them: object stores fetch the entries concurrently.
        found = self.fs.cat(paths) if paths else {}
        entries = [ShardEntry.from_json(data, path) for path, data in sorted(found.items())]
        return {entry.index: entry for entry in entries}

    def shard_problem(self, teacher_id: str, entry: ShardEntry, checksum: bool = True) -> str | None:
        """Why a published shard cannot be trusted (missing, truncated, corrupt), or None."""
        path = join(self.teacher_dir(teacher_id), entry.file)
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
                    compression: str | None = None, **counts: int) -> ShardEntry:
        """Publish one teacher shard: the Arrow file first, then its entry."""
        folder = self.teacher_dir(teacher_id)
        written = write_table(self.fs, join(folder, shard_file(index)), table, compression)
        entry = ShardEntry(index=index, file=shard_file(index), rows=written.rows,
                           bytes=written.bytes, sha256=written.sha256, **counts)
        publish_bytes(self.fs, join(folder, f"shard-{index:05d}.json"), entry.to_json())
        return entry

    def read_shard(self, teacher_id: str, index: int) -> pa.Table:
        return read_table(self.fs, join(self.teacher_dir(teacher_id), shard_file(index)))

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
