"""`distill serve CONFIG`: the config's deployments, served by this process until stopped.

- `cache-teachers/<key>` (`cache-tasks/<key>` for a tasks config) on the config's cron
  schedule; a run caches whatever is missing, so a nightly run over a grown corpus, or a config
  with a new task appended, does just the new work.
- `train-student/<key>-<method>` per training method (`train-continual/<key>` for a tasks
  config), started by a Prefect deployment trigger on the `distill.caches.complete` event that a
  caching run emits once every teacher's cache is complete (flows/handoff.py).

Flow runs execute in subprocesses of this process, which needs the models and the cache in
reach; they end with it however it ends (`exit_with_parent`, flows/server.py). Scale out by
serving the same config on more machines (docs/scaling.md).
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from pydantic import ValidationError

from distill.flows.caching import cache_tasks, cache_teachers
from distill.flows.handoff import CACHES_COMPLETE, config_key, config_resource
from distill.flows.training import train_continual_student, train_student
from distill.pipeline.config import ConfigError, DistillConfig
from distill.pipeline.methods import REGISTRY


def schedule_for(config: DistillConfig) -> CronSchedule:
    if config.schedule is None:
        raise ConfigError(f"{config.source}: `distill serve` needs a `schedule` section, e.g. "
                          "schedule: {cron: '0 2 * * *'} (cache nightly at 02:00 UTC)")
    try:
        return CronSchedule(cron=config.schedule.cron, timezone=config.schedule.timezone)
    except ValidationError as e:
        problem = e.errors()[0]["msg"]
        raise ConfigError(f"{config.source}: schedule: {problem} (cron "
                          f"'{config.schedule.cron}', timezone '{config.schedule.timezone}')") from None


def training_methods(config: DistillConfig) -> list[str]:
    """The methods to train when the caches complete: schedule.train_methods, else train.method."""
    if config.tasks:
        return [] if config.schedule.train_methods == [] else ["continual"]
    methods = config.schedule.train_methods
    if methods is None:
        methods = [config.train.method if config.train else "mean"]
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ConfigError(f"{config.source}: schedule.train_methods: unknown method(s) "
                          f"{', '.join(unknown)}; choose from {', '.join(sorted(REGISTRY))}")
    return methods


def deployments(config: DistillConfig) -> list[RunnerDeployment]:
    """The caching deployment and the triggered training deployments of one config."""
    key = config_key(config)
    path = str(Path(config.source).resolve())
    caching = cache_tasks if config.tasks else cache_teachers
    made = [caching.to_deployment(
        name=key, schedule=schedule_for(config), parameters={"config": path},
        entrypoint_type=EntrypointType.MODULE_PATH, tags=["distill", "cache"],
        description=f"cache the teachers of {path} (missing shards only)")]
    for method in training_methods(config):
        trigger = DeploymentEventTrigger(
            name=f"{key} caches complete", expect={CACHES_COMPLETE},
            match={"prefect.resource.id": config_resource(config)})
        if config.tasks:
            flow, name, parameters = train_continual_student, key, {"config": path}
        else:
            flow, name, parameters = train_student, f"{key}-{method}", {"config": path, "method": method}
        made.append(flow.to_deployment(
            name=name, parameters=parameters, triggers=[trigger],
            entrypoint_type=EntrypointType.MODULE_PATH, tags=["distill", "train"],
            description=f"train a student from the caches of {path} when they are complete"))
    return made
