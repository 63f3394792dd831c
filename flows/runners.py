"""Where the shard tasks of a teacher run: threads in this process (the default), or the worker
processes of a Ray (prefect-ray) or Dask (prefect-dask) cluster (`runner` in the config).

Threads share one loaded teacher per process and cost nothing to start. A cluster spreads a
teacher's shards over many GPUs and machines, but starting one costs 10-30 s here
(docs/scaling.md, "Task runners"), so a local cluster (no `address`) is started only when a shard needs
computing, and once per `cluster_scope`: every teacher of one `distill cache` shares it.

Worker processes report their task runs to the Prefect API. Without a configured server that
API is this process's embedded one, so its address is handed to the workers; otherwise each
worker starts an embedded server of its own (measured: 4 trivial tasks took 28 s instead of 4).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Callable, Iterator
from urllib.parse import urlsplit

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from distill.pipeline.config import ConfigError, RunnerConfig

EXTRAS = {"ray": "prefect_ray", "dask": "prefect_dask"}
DEFAULT_PORTS = {"ray": 6379, "dask": 8786}
RAY_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch; see _ray_local_only

_lock = threading.Lock()
_scopes = 0
_clusters = ExitStack()              # what the outermost scope stops when it ends
_local_dask: dict[int, str] = {}     # workers -> scheduler address of the local Dask cluster
_keeper: ThreadPoolExecutor | None = None


def _in_keeper(fn, *args, **kwargs):
    """Run `fn` in the one thread that starts and stops this scope's clusters. Ray's processes
    die with the thread that started them (PR_SET_PDEATHSIG follows the thread, not the
    process), and the flow thread that first needs a cluster ends before the scope does: Ray's
    server was killed under the next teacher when a task thread started it."""
    global _keeper
    if _keeper is None:
        _keeper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distill-clusters")
    return _keeper.submit(fn, *args, **kwargs).result()


def check_installed(runner: RunnerConfig, where: str) -> None:
    """Fail before any work when the runner's extra is not installed."""
    module = EXTRAS.get(runner.kind)
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(f"{where}: runner.kind {runner.kind} needs the `{runner.kind}` extra: "
                          f"pip install 'distill[{runner.kind}]' (or use --runner threads)")


@contextmanager
def cluster_scope() -> Iterator[None]:
    """A local cluster started inside this scope (by any thread) stays up until the outermost
    scope ends, so later teachers reuse it instead of paying the start again."""
    global _scopes, _keeper
    with _lock:
        _scopes += 1
    try:
        yield
    finally:
        with _lock:
            _scopes -= 1
            if _scopes == 0 and _keeper is not None:
                _local_dask.clear()
                _in_keeper(_clusters.close)
                _keeper.shutdown()
                _keeper = None


@contextmanager
def shard_runner(runner: RunnerConfig, where: str) -> Iterator[TaskRunner]:
    """A started task runner for one teacher's shard tasks; submits made inside carry the
    per-shard resources and the Prefect API address the workers need."""
    if runner.kind == "threads":
        with ThreadPoolTaskRunner(max_workers=runner.workers) as threads:
            yield threads
        return
    check_installed(runner, where)
    with cluster_scope():
        task_runner, offers, placement = (_ray if runner.kind == "ray" else _dask)(runner, where)
        with task_runner:
            _fits(runner, where, offers())
            with _api_for_workers(runner), placement:
                yield task_runner


def _ray(runner: RunnerConfig, where: str):
    import ray
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    with _lock:
        if not ray.is_initialized():
            # Started here rather than by RayTaskRunner, which would stop Ray when its flow
            # ends, under the feet of any teacher flow still running beside it.
            if runner.address:
                _reachable(runner, where)
                _connect_ray(runner, where)
            else:
                temp_dir = tempfile.mkdtemp(prefix="distill-ray-")
                _clusters.callback(shutil.rmtree, temp_dir, ignore_errors=True)
                _clusters.callback(_ray_local_only())
                _in_keeper(ray.init, num_cpus=runner.workers, include_dashboard=False,
                           _temp_dir=temp_dir)
            _clusters.callback(ray.shutdown)
    # Ray checks its options only when the first shard is submitted; `ray.remote()` with no
    # options at all is an AssertionError of its own, so only given options are checked.
    if runner.shard_resources:
        try:
            ray.remote(**runner.shard_resources)(lambda: None)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: runner.shard_resources: {e}") from None

    if ray.cluster_resources().get("GPU") and not runner.shard_resources.get("num_gpus"):
        get_run_logger().warning(
            "the Ray cluster has GPUs but runner.shard_resources asks for none: Ray then neither "
            "hides GPUs from a shard nor counts them, so the shards of a node share its first "
            "GPU; set shard_resources: {num_gpus: 1}")

    def offers() -> list[dict]:
        return [node["Resources"] for node in ray.nodes() if node["Alive"]]

    return RayTaskRunner(), offers, remote_options(**runner.shard_resources)


def _ray_local_only() -> Callable[[], None]:
    """Make the local cluster about to start bind to loopback only; returns what undoes it.

    Ray 2.60 binds its servers (GCS, raylet, workers, agents) to the node's address, which on
    Linux is the machine's outward address, reachable by anyone on its network. Ray's own
    local-only mode, its default on macOS and Windows, makes that address 127.0.0.1 instead:
    the setting is read by this process (already imported, so set on the module too) and by
    every Ray process, which inherits it. It is undone when the cluster stops, so that a later
    `runner.address` in the same process joins its cluster by the machine's address."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(RAY_LOCAL_ONLY)
    ray_constants.ENABLE_RAY_CLUSTER, os.environ[RAY_LOCAL_ONLY] = False, "0"

    def undo() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(RAY_LOCAL_ONLY, None)
        else:
            os.environ[RAY_LOCAL_ONLY] = saved[1]

    return undo


def _connect_ray(runner: RunnerConfig, where: str) -> None:
    """Join the cluster at `runner.address` with the auth mode `ray start --head` gave it.

    Without RAY_AUTH_MODE, `ray start` turns token authentication on whenever this machine
    has a token (~/.ray/auth_token, written by any earlier local Ray run), but `ray.init` with
    an explicit address never does, so the client was refused after 20 s. We decide as Ray's
    own `address="auto"` does: token mode when a token is at hand (a cluster without auth
    ignores the token). A cluster holding another token still refuses: say which setting."""
    import ray
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        _in_keeper(ray.init, address=runner.address)
    except ConnectionError as e:
        raise ConfigError(
            f"{where}: runner.address: the ray cluster at {runner.address} refused this client "
            f"({str(e).splitlines()[0]}); a cluster with token authentication needs its token "
            "here too: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the token of the head "
            "node's ~/.ray/auth_token") from None


def _dask(runner: RunnerConfig, where: str):
    import dask
    from prefect_dask import DaskTaskRunner

    address = runner.address
    if address:
        _reachable(runner, where)
    else:
        with _lock:
            if runner.workers not in _local_dask:
                from distributed import LocalCluster

                cluster = _in_keeper(lambda: _clusters.enter_context(LocalCluster(
                    n_workers=runner.workers, threads_per_worker=1, processes=True,
                    dashboard_address=None)))
                _local_dask[runner.workers] = cluster.scheduler_address
            address = _local_dask[runner.workers]
    task_runner = DaskTaskRunner(address=address)

    def offers() -> list[dict]:
        workers = task_runner.client.scheduler_info()["workers"].values()
        return [w.get("resources") or {} for w in workers]

    resources = runner.shard_resources
    return task_runner, offers, dask.annotate(resources=resources) if resources else nullcontext()


def _reachable(runner: RunnerConfig, where: str) -> None:
    """Ray retries an unreachable address for minutes; a plain connect says so in seconds."""
    if runner.address == "auto":  # Ray: the cluster this machine belongs to
        return
    parts = urlsplit(runner.address if "://" in runner.address else f"tcp://{runner.address}")
    port = parts.port or (10001 if parts.scheme == "ray" else DEFAULT_PORTS[runner.kind])
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as e:
        start = "ray start --head" if runner.kind == "ray" else "dask scheduler"
        raise ConfigError(f"{where}: runner.address: no {runner.kind} cluster answers at "
                          f"{runner.address} ({e}); start one (`{start}`) or leave the address "
                          "out to start a local cluster for this run") from None


def _requests(runner: RunnerConfig) -> dict:
    """What one shard asks of a worker: Dask's resources as given; for Ray, the resources among
    its remote options (the others, like max_calls, ask for nothing)."""
    if runner.kind == "dask":
        return runner.shard_resources
    names = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
    options = runner.shard_resources
    return {**{names[k]: v for k, v in options.items() if k in names}, **options.get("resources", {})}


def _fits(runner: RunnerConfig, where: str, offers: list[dict]) -> None:
    """A shard asking for more than any worker offers would wait forever: say so now."""
    requests = _requests(runner)
    if not requests or any(all(offer.get(k, 0) >= v for k, v in requests.items()) for offer in offers):
        return
    offered = [{k: offer.get(k, 0) for k in requests} for offer in offers]
    hint = " (Dask workers declare theirs: `dask worker --resources GPU=1`)" if runner.kind == "dask" else ""
    raise ConfigError(f"{where}: runner.shard_resources asks {requests} per shard, but no "
                      f"{runner.kind} worker offers that (workers offer {offered}); lower the "
                      f"request or add workers that have it{hint}")


def _api_for_workers(runner: RunnerConfig):
    """Point the workers at this run's Prefect API (they inherit it through the task context)."""
    url = str(PREFECT_API_URL.value() or get_client(sync_client=True).api_url)
    if runner.address and urlsplit(url).hostname in ("127.0.0.1", "localhost"):
        get_run_logger().warning(
            "the %s workers report to the Prefect API at %s; workers on other machines cannot "
            "reach it: run a Prefect server they can reach and set PREFECT_API_URL", runner.kind, url)
    return temporary_settings({PREFECT_API_URL: url})
