"""`distill serve CONFIG`: the config's deployments, served by this process until stopped.

- `cache-teachers/<key>` (`cache-tasks/<key>` for a tasks config) on the config's cron
  schedule; a run caches whatever is missing, so a nightly run over a grown corpus, or a config
  with a new task appended, does just the new work.
- `train-student/<key>-<method>` per training method (`train-continual/<key>` for a tasks
  config), started by a Prefect deployment trigger on the `distill.caches.complete` event that a
  caching run emits once every teacher's cache is complete (flows/handoff.py).

Flow runs execute in subprocesses of this process, which needs the models and the cache in
reach; they end with it however it ends (`exit_with_parent`, flows/server.py). Scale out by
serving the same config on more machines (docs/scaling.md): every worker registers the same
deployments, so none may pause them when it stops (Prefect's `serve()` does), and each worker
tags the runs it claims with its name, so that the same worker, restarted, can mark the runs it
left behind as crashed.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from uuid import UUID

from prefect import get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.runner import Runner
from prefect.runner._state_proposer import StateProposer
from prefect.states import Crashed
from pydantic import ValidationError

from distill.flows.caching import cache_tasks, cache_teachers
from distill.flows.handoff import CACHES_COMPLETE, config_key, config_resource
from distill.flows.training import train_continual_student, train_student
from distill.pipeline import kinds
from distill.pipeline.config import ConfigError, DistillConfig


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
    known = kinds.methods(kinds.training_kind(config.teachers, config.source).name)
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"{config.source}: schedule.train_methods: unknown method(s) "
                          f"{', '.join(unknown)} for these teachers; choose from {', '.join(known)}")
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


def worker_tag(worker: str) -> str:
    """The tag a worker puts on each flow run it claims: how its restart finds what it left."""
    return f"distill-worker:{worker}"


@contextmanager
def worker_lock(config: DistillConfig, worker: str) -> Iterator[None]:
    """Within: the only `distill serve` of this config named `worker` on this machine (Linux; an
    abstract socket, gone with the process however it ends). Two live processes of one name
    would take each other's runs for left behind and crash them."""
    if not sys.platform.startswith("linux"):
        yield
        return
    name = hashlib.sha256(f"{config_key(config)}\0{worker}".encode()).hexdigest()[:32]
    with socket.socket(socket.AF_UNIX) as lock:
        try:
            lock.bind(f"\0distill-serve-{name}")
        except OSError:
            raise ConfigError(f"{config.source}: another `distill serve` on this machine already "
                              f"serves it as worker '{worker}'; give this one another --worker "
                              "NAME") from None
        yield


class _TaggingProposer(StateProposer):
    """Prefect's claim of a scheduled run (Scheduled -> Pending), then the worker's tag on it."""

    def __init__(self, *, client: PrefectClient, tag: str) -> None:
        super().__init__(client=client)
        self.tag = tag

    async def propose_pending(self, flow_run: FlowRun) -> bool:
        if not await super().propose_pending(flow_run):
            return False
        await self._client.update_flow_run(flow_run.id, tags=[*flow_run.tags, self.tag])
        return True


class WorkerRunner(Runner):
    """Prefect's runner, which leaves the shared deployments' schedules alone when it stops and
    tags every run it claims with `worker_tag(worker)`. Prefect 3.8.8's runner records no
    identity of its own on a run, hence the tagging claim in its scheduled-run poller."""

    def __init__(self, worker: str, limit: int | None) -> None:
        super().__init__(pause_on_shutdown=False, limit=limit)
        self.worker = worker

    async def __aenter__(self) -> "WorkerRunner":
        await super().__aenter__()
        self._scheduled_run_poller._state_proposer = _TaggingProposer(
            client=self._client, tag=worker_tag(self.worker))
        return self


async def crash_left_runs(client: PrefectClient, deployment_ids: list[UUID], worker: str) -> list[FlowRun]:
    """Mark as crashed the runs of these deployments that `worker` claimed and left Pending or
    Running: they died with its previous process (`exit_with_parent`), and nothing else would
    ever end them."""
    left = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=deployment_ids),
        tags=FlowRunFilterTags(all_=[worker_tag(worker)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING]))))
    for run in left:
        await client.set_flow_run_state(run.id, Crashed(
            message=f"worker '{worker}' stopped while this run was {run.state_type.value.lower()}; "
                    "marked crashed when it restarted"), force=True)
    return left


async def restore_schedule(client: PrefectClient, deployment_id: UUID, since: datetime.datetime) -> None:
    """Schedule the deployment's runs again from `since`. Registering a deployment deletes its
    future scheduled runs, and Prefect's scheduler recreates them only from the time of its next
    loop (up to a minute later): a cron slot in between would be dropped."""
    await client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id},
                         json={"start_time": since.isoformat()})


async def serve(made: list[RunnerDeployment], worker: str, limit: int | None) -> None:
    """Register the deployments, crash the runs this worker left behind, serve until stopped."""
    runner = WorkerRunner(worker, limit)
    # Until `runner.start` puts Prefect's own SIGTERM handler in place (it replaces this one),
    # a SIGTERM, say a worker stopped while it registers, cancels the registration and the
    # command ends as cleanly: nothing runs yet, and nothing is paused on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    try:
        left = await _register(runner, made, worker)
    except asyncio.CancelledError:
        return
    print(f"worker '{worker}' serving {', '.join(f'{d.flow_name}/{d.name}' for d in made)}; "
          f"{len(left)} run(s) it left behind marked crashed", flush=True)
    await runner.start()


async def _register(runner: Runner, made: list[RunnerDeployment], worker: str) -> list[FlowRun]:
    """Add the deployments, crash the runs this worker left behind and bring back the cron
    slots that registering deleted; the runs marked crashed."""
    since = datetime.datetime.now(datetime.timezone.utc)
    ids = [await runner.aadd_deployment(d) for d in made]
    async with get_client() as client:
        left = await crash_left_runs(client, ids, worker)
        for deployment, deployment_id in zip(made, ids):
            if deployment.schedules:
                await restore_schedule(client, deployment_id, since)
    return left
