"""Where shard tasks run (flows/runners.py, flows/devices.py): threads, Ray, Dask, one teacher
per device. Ray and Dask start clusters (10-30 s each here), so each has one slow test."""

import contextlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tiny
from distill.flows.caching import cache_teacher, cache_teachers
from distill.flows.cli import app
from distill.flows.devices import limit_name
from distill.flows.runners import cluster_scope
from distill.flows.server import die_with_parent
from distill.pipeline import caching
from distill.pipeline.caching import teacher_cache
from distill.pipeline.config import ConfigError, load_config, with_runner
from distill.pipeline.corpus import plan_corpus
from distill.pipeline.kinds.classification.inference import ClassificationInference
from distill.storage.cache import Cache


def _shard_files(cache_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache_dir)): p.read_bytes()
            for p in sorted((cache_dir / "teachers").glob("*/shard-*.arrow"))}


def _checksums(cache_dir: Path, summaries: list[dict]) -> dict[str, list[str]]:
    cache = Cache(cache_dir)
    return {s["teacher"]: [e.sha256 for e in cache.load_manifest(s["teacher_id"]).shards]
            for s in summaries}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_teacher_cache_travels_to_workers_without_its_model(project):
    config = load_config(project.config())
    cache = Cache(config.cache)
    plan = plan_corpus(cache, config.corpus)
    a, b = (teacher_cache(cache, plan, config.teacher(n)) for n in "ab")
    model = a.inference
    copy = pickle.loads(pickle.dumps(a))
    assert "runner" not in copy.__dict__ and len(pickle.dumps(a)) < 20_000
    assert copy.inference is model  # same process: the one loaded model is shared
    try:
        b = pickle.loads(pickle.dumps(b))
        b._home_pid = -1  # as in a Ray/Dask worker: another process than the planner's
        assert b.inference is not model and set(caching._LOADED) == {b.teacher_id}  # a was freed
    finally:
        caching._LOADED.clear()


def test_runner_options_are_checked(project, monkeypatch):
    config = load_config(project.config())
    with pytest.raises(ConfigError, match=r"runner\.kind: Input should be 'threads', 'ray' or 'dask'"):
        with_runner(config, kind="spark")
    with pytest.raises(ConfigError, match="address and shard_resources are for kind: ray or dask"):
        with_runner(config, address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="devices is for kind: threads"):
        with_runner(config, kind="ray", devices=["cuda:0"])
    ray = with_runner(config, kind="ray", address="10.0.0.1:6379")
    assert (ray.runner.kind, ray.runner.address, config.runner.kind) == ("ray", "10.0.0.1:6379", "threads")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "prefect_dask" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs the `dask` extra: pip install 'distill\[dask\]'"):
        cache_teachers.fn(with_runner(config, kind="dask"))


@pytest.mark.usefixtures("prefect")
def test_unreachable_cluster_is_a_quick_clear_error(project):
    address = f"127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["cache", str(project.config()), "--teacher", "a",
                                      "--runner", "ray", "--address", address])
    assert result.exit_code == 2, result.output
    assert f"no ray cluster answers at {address}" in result.output
    assert "ray start --head" in result.output and time.perf_counter() - start < 60


@pytest.mark.usefixtures("prefect")
def test_one_teacher_per_device_at_a_time(project, monkeypatch):
    tiny.classifier(project.root / "teacher-c", seed=3)
    teachers = [{"name": n, "model": f"teacher-{n}", "max_length": 16, "batch_size": 8} for n in "abc"]
    config = with_runner(load_config(project.config(teachers=teachers)), devices=["cpu:0", "cpu:1"])
    runs, arrivals, lock = [], [], threading.Lock()
    both_at_once = threading.Barrier(2, timeout=60)  # passes only if two teachers run together
    third_started = threading.Event()
    real_run = ClassificationInference._run

    def recorded(self, texts, seed, on_rows, pairs):
        """The first teacher holds its device until the third has started: the third must take
        the device the second frees, never the first's."""
        name = self.config.name
        with lock:
            new = name not in arrivals
            arrivals.extend([name] if new else [])
            runs.append([name, str(self.device), time.perf_counter(), None])
            run = runs[-1]
        if new and len(arrivals) <= 2:
            both_at_once.wait()
        if name == arrivals[-1] and len(arrivals) == 3:
            third_started.set()
        if name == arrivals[0]:
            assert third_started.wait(60), "the third teacher never got a free device"
        try:
            return real_run(self, texts, seed, on_rows, pairs)
        finally:
            run[3] = time.perf_counter()

    monkeypatch.setattr(ClassificationInference, "_run", recorded)
    summaries = cache_teachers(config)
    assert [s["computed"] for s in summaries] == [3, 3, 3]
    device_of = {}
    for name, device, *_ in runs:
        assert device_of.setdefault(name, device) == device  # a teacher stays on its device
    first, second, third = arrivals
    assert device_of[first] != device_of[second] and device_of[third] == device_of[second]
    for device in ("cpu:0", "cpu:1"):
        spans = sorted((start, end, name) for name, d, start, end in runs if d == device)
        for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
            assert name == other or end <= start, f"{name} and {other} overlapped on {device}"
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(limit_name("cpu:0"))
    assert (limit.limit, limit.active_slots) == (1, 0)
    with pytest.raises(ConfigError, match="3 teachers side by side on 2 devices"):
        cache_teachers(config, max_parallel=3)


BAD_RESOURCES = {  # (shard_resources, what the error says); this machine has no GPU
    "ray": [({"num_gpus": 1}, r"asks \{'GPU': 1\} per shard, but no ray worker offers that"),
            ({"gpus": 1}, "Invalid option keyword gpus")],
    "dask": [({"GPU": 1}, r"asks \{'GPU': 1\} per shard, but no dask worker .*dask worker --resources")],
}


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _ray_listening_addresses() -> set[str]:
    """The addresses the Ray processes started by this process listen on (GCS, raylet,
    workers, agents, log monitor: every descendant whose command line names Ray)."""
    import psutil

    ray_pids = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ray" in " ".join(child.cmdline()) or child.name().startswith(("ray", "gcs_server")):
                ray_pids.add(child.pid)
    return {c.laddr.ip for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in ray_pids}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect")
@pytest.mark.parametrize("kind", ["ray", "dask"])
def test_cluster_runner_writes_the_thread_runners_bytes(project, kind, monkeypatch):
    """One cluster for both teachers; shards computed in its workers, never in this process;
    every shard byte-identical to the thread runner's; a local Ray cluster listens on loopback
    only."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray in a test
    threads = cache_teachers(str(project.config()))
    baseline = _shard_files(project.cache)
    assert len(baseline) == 6
    config = with_runner(load_config(project.config(cache="cluster-cache")), kind=kind,
                         workers=2)  # the defaults: no shard_resources

    def not_here(self, *args):
        raise AssertionError("a teacher was loaded in the flow process, not in a worker")

    monkeypatch.setattr(ClassificationInference, "__init__", not_here)
    with cluster_scope():
        summaries = cache_teachers(config)
        assert _shard_files(project.root / "cluster-cache") == baseline
        assert _checksums(project.root / "cluster-cache", summaries) == _checksums(project.cache, threads)
        assert [s["computed"] for s in summaries] == [3, 3]
        if kind == "ray":
            listening = _ray_listening_addresses()
            assert listening and listening <= LOOPBACK, listening
        for resources, message in BAD_RESOURCES[kind]:  # refused at once, in the same cluster
            with pytest.raises(ConfigError, match=r"runner\.shard_resources.*" + message):
                cache_teacher(with_runner(load_config(project.config(cache="other")), kind=kind,
                                          shard_resources=resources), "a")


@pytest.mark.slow
@pytest.mark.usefixtures("prefect")
def test_dask_from_a_folder_with_decoy_packages(project, tmp_path):
    """`distill cache --runner dask` started in a folder whose `storage/`, `pipeline/` and
    `flows/` would shadow generic import names (as a Dask worker's own `storage/` scratch
    folder did: every Dask run hung) writes the thread runner's bytes."""
    cache_teachers(str(project.config()))
    baseline = _shard_files(project.cache)
    work = tmp_path / "elsewhere"
    for name in ("storage", "pipeline", "flows", "inspection"):
        (work / name).mkdir(parents=True)
        (work / name / "__init__.py").write_text(f"raise ImportError('decoy {name}')\n")
    config = project.config(cache=str(project.root / "dask-cache"))
    env = {**os.environ, "PYTHONPATH": str(work), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "distill.flows.cli", "cache", str(config),
                           "--runner", "dask"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _shard_files(project.root / "dask-cache") == baseline


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head` on this machine, as a user starts it: no RAY_AUTH_MODE, a token in
    ~/.ray/auth_token (as any earlier local Ray run leaves), so Ray turns token auth on. Its
    own session, killed whole at the end (a SIGTERM leaves gcs_server running)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("distill-test-" + "0" * 52)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    port = _closed_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit 107 bytes
    log = open(tmp_path / "ray-head.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=die_with_parent())  # and --block's reaper takes Ray's processes with it
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "ray-head.log").read_text()[-3000:]
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_address_of_a_head_started_with_token_auth(project, ray_head, tmp_path):
    """`distill cache --runner ray --address` joins a `ray start --head` cluster that turned
    token auth on by itself (it used to be refused after 20 s with InvalidAuthToken), and
    writes the thread runner's bytes; a client without the cluster's token is told which
    setting to give."""
    address, env = ray_head
    cache_teachers(str(project.config()))
    baseline = _shard_files(project.cache)
    env = {**env, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)

    def cache(name: str, **extra) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "distill.flows.cli", "cache",
                               str(project.config(cache=name)), "--teacher", "a", "--runner", "ray",
                               "--address", address],
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)

    done = cache("ray-cache")
    assert done.returncode == 0, done.stderr[-3000:]
    written = _shard_files(project.root / "ray-cache")
    assert len(written) == 3 and written.items() <= baseline.items()
    refused = cache("other-cache", RAY_AUTH_TOKEN="not-the-clusters-token")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"the ray cluster at {address} refused this client" in refused.stderr
    assert "RAY_AUTH_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
