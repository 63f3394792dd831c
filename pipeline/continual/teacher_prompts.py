"""Teacher prompt vectors as the continual trainer reads them, never from a loaded teacher.

Training batches carry them from the task caches (`Batch.teacher_prompts`). Evaluation needs them
for the `eval` rows too, because a student that maps teacher prompts cannot classify an input
without its teachers' vectors (the paper's own property; docs/continual.md): the caching flow runs the
prompt-based teachers over the `eval` file as well (`held_out_teachers`), and the rows are
looked up here by sample id, as the causal-LM trainer reads its held-out text.
"""

from __future__ import annotations

import numpy as np

from distill.pipeline.caches import open_caches
from distill.pipeline.config import DistillConfig, eval_corpus_config
from distill.storage.columns import to_matrix
from distill.storage.ids import sample_ids
from distill.storage.records import CacheError, TeacherManifest

COLUMN = "prompt_vector"


def prompt_widths(manifests: list[TeacherManifest]) -> list[tuple[str, int]]:
    """(teacher name, prompt-vector width) of the caches that carry prompt vectors, in order."""
    return [(m.name, m.schema.field(COLUMN).type.list_size) for m in manifests if COLUMN in m.schema.names]


def eval_prompt_vectors(config: DistillConfig, teachers: list[str], texts: list[str]) -> np.ndarray:
    """[len(texts), sum of widths] float32: the named teachers' prompt vectors side by side for
    each eval text, NaN where a text has none (a row the eval plan skipped as empty)."""
    held_out = eval_corpus_config(config)
    held_out = held_out.model_copy(update={"teachers": [t for t in held_out.teachers if t.name in teachers]})
    try:
        aligned = open_caches(held_out)
    except CacheError:
        first = config.tasks[0].name if config.tasks else None
        command = f"distill cache {config.source}" + (f" --task {first}" if first else "")
        raise CacheError(
            f"{config.source}: the student maps the prompts of teacher(s) {', '.join(teachers)}, so "
            f"evaluating it needs their prompt vectors over the eval file {config.eval.path}, and "
            f"{config.cache} has no complete cache of them. Run `{command}` (caching a task also "
            "caches prompt-based teachers over `eval`), or set continual.map_teacher_prompts: "
            "false to train on logits only") from None
    width = sum(w for _, w in prompt_widths(aligned.manifests))
    found: dict[int, np.ndarray] = {}
    for index in range(len(aligned)):
        shard = aligned.read(index, columns=[COLUMN])
        matrix = np.concatenate([to_matrix(t.column(COLUMN)).astype(np.float32)
                                 for t in shard.teachers], axis=1)
        found.update(zip(shard.text.column("sample_id").to_numpy().tolist(), matrix))
    missing = np.full(width, np.nan, dtype=np.float32)
    return np.stack([found.get(i, missing) for i in sample_ids(texts).tolist()]).reshape(len(texts), width)
