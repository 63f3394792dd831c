"""How finished caches hand over to training: Prefect events, emitted by the caching flows.

`distill serve` (flows/serve.py) registers the training deployments with a trigger on
`distill.caches.complete` for one config. A caching run emits it when, at its end, every
teacher of the config has a complete cache of the corpus (of every task, for a tasks config)
and the run itself wrote something: a nightly run that finds nothing new does not retrain.
Teachers cached by separate runs (`--teacher a`, later `--teacher b`) fire it with the last.

Why an event of our own rather than a trigger on `prefect.flow-run.Completed`: Prefect 3.8.8
delays flow-run-state triggers by 15 minutes for cron-created runs, while a custom event fires
the trigger within about a second (measured; docs/scaling.md, "Schedules and the training
trigger"). Why a check at the end of the caching run rather than a compound trigger over K
teacher events: teachers may be cached hours apart, beyond any trigger window, and the caches
themselves are the truth about completeness.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import get_run_logger
from prefect.events import emit_event

from distill.pipeline.caches import open_caches
from distill.pipeline.config import DistillConfig
from distill.storage.records import CacheError

CACHE_WRITTEN = "distill.teacher-cache.written"
CACHES_COMPLETE = "distill.caches.complete"


def config_key(config: DistillConfig) -> str:
    """A stable name for a config file: its stem plus a hash of its absolute path, so two
    configs called `distill.yaml` in different projects never trigger each other's training."""
    path = Path(config.source).resolve()
    return f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def config_resource(config: DistillConfig) -> str:
    return f"distill.config.{config_key(config)}"


def announce_teacher(config: DistillConfig, summary: dict) -> None:
    """One event per finished teacher cache (for automations and the event feed)."""
    emit_event(event=CACHE_WRITTEN, resource={"prefect.resource.id": f"distill.teacher-cache."
                                                                     f"{summary['teacher_id']}",
                                              "prefect.resource.name": summary["teacher"]},
               related=[{"prefect.resource.id": config_resource(config),
                         "prefect.resource.role": "config"}],
               payload={k: summary[k] for k in ("plan_id", "rows", "shards", "computed")})


def complete_caches(config: DistillConfig) -> dict | None:
    """{plan id: teacher ids} when every teacher's cache is complete over the corpus (over
    every task's corpus), else None."""
    corpora = [config.for_task(t.name) for t in config.tasks] if config.tasks else [config]
    try:
        opened = [open_caches(c) for c in corpora]
    except CacheError:
        return None
    return {a.plan.plan_id: [m.teacher_id for m in a.manifests] for a in opened}


def announce_if_complete(config: DistillConfig, wrote: bool) -> bool:
    """Emit `distill.caches.complete` for this config if its caches are complete and this run
    wrote to them; returns whether it did."""
    caches = complete_caches(config) if wrote else None
    if caches is None:
        return False
    emit_event(event=CACHES_COMPLETE,
               resource={"prefect.resource.id": config_resource(config),
                         "prefect.resource.name": config_key(config)},
               payload={"config": str(Path(config.source).resolve()), "cache": config.cache,
                        "plans": caches})
    get_run_logger().info("caches of %s complete (plans %s): training may start", config.source,
                          ", ".join(caches))
    return True
