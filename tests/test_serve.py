"""`distill serve`: deployments, the completion hand-off, and one run against a real Prefect server.

The integration test starts `prefect server start` on loopback with its own PREFECT_HOME, serves
a config with `distill serve` in a subprocess, runs the caching deployment once, and watches the
training flow run start and finish by itself (the server's trigger, not a loop of ours).
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

import tiny
from distill.flows.caching import cache_tasks, cache_teachers
from distill.flows.handoff import CACHES_COMPLETE, complete_caches, config_key, config_resource
from distill.flows.serve import deployments, worker_lock
from distill.pipeline.config import ConfigError, load_config
from processes import process, wait_for
from s3server import free_ports

TRAIN = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "output": "run", "method": "mean"}
STUDENT = {"from_teacher": "a", "layers": 1, "max_length": 16}


def _config(project, **overrides) -> Path:
    settings = {"student": STUDENT, "train": TRAIN, "schedule": {"cron": "0 3 * * *"}, **overrides}
    return project.config(**settings)


# ---- deployments (no server) -------------------------------------------------------------

def test_deployments_schedule_caching_and_trigger_training_per_method(project):
    config = load_config(_config(project, schedule={"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin",
                                                     "train_methods": ["govern", "mean"]}))
    made = deployments(config)
    key = config_key(config)
    assert [(d.flow_name, d.name) for d in made] == [
        ("cache-teachers", key), ("train-student", f"{key}-govern"), ("train-student", f"{key}-mean")]
    cache = made[0]
    [schedule] = cache.schedules
    assert schedule.schedule.cron == "30 2 * * 1-5" and schedule.schedule.timezone == "Europe/Berlin"
    assert cache.parameters == {"config": str(Path(config.source).resolve())}
    assert cache.entrypoint == "distill.flows.caching.cache_teachers" and not cache.triggers
    for d, method in zip(made[1:], ["govern", "mean"]):
        [trigger] = d.triggers
        assert trigger.expect == {CACHES_COMPLETE} and not d.schedules
        assert trigger.match.model_dump()["prefect.resource.id"] == config_resource(config)
        assert d.parameters == {"config": cache.parameters["config"], "method": method}


def test_deployments_of_a_tasks_config_cache_tasks_and_train_continually(project):
    config = load_config(_tasks_config(project, ["t1"]))
    made = deployments(config)
    assert [d.flow_name for d in made] == ["cache-tasks", "train-continual"]
    assert made[1].parameters == {"config": str(Path(config.source).resolve())}


def test_configs_of_the_same_name_in_two_folders_do_not_share_a_trigger(project, tmp_path):
    first = load_config(_config(project))
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "config.yaml").write_text(Path(first.source).read_text())
    second = load_config(other / "config.yaml")
    assert config_key(first).startswith("config-") and config_key(first) != config_key(second)


@pytest.mark.parametrize("schedule, error", [
    (None, "needs a `schedule` section"),
    ({"cron": "every night"}, "schedule: "),
    ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "Mars/Olympus"),
    ({"cron": "0 3 * * *", "train_methods": ["bagging"]}, "unknown method(s) bagging"),
])
def test_bad_schedules_are_refused_with_the_key(project, schedule, error):
    path = project.config(student=STUDENT, train=TRAIN, **({"schedule": schedule} if schedule else {}))
    with pytest.raises(ConfigError, match=r"config\.yaml") as caught:
        deployments(load_config(path))
    assert error in str(caught.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the lock is Linux-only")
def test_a_second_worker_of_the_same_name_and_config_is_refused(project):
    config = load_config(_config(project))
    with worker_lock(config, "a"):
        with worker_lock(config, "b"):
            pass
        with pytest.raises(ConfigError, match=r"config\.yaml: .*worker 'a'; give this one another --worker"):
            with worker_lock(config, "a"):
                pass
    with worker_lock(config, "a"):                  # released with the first holder
        pass


# ---- the completion gate (embedded Prefect) ------------------------------------------------

@pytest.mark.usefixtures("prefect")
def test_caches_are_complete_only_when_every_teacher_is(project):
    config = load_config(_config(project))
    assert complete_caches(config) is None
    cache_teachers(config, teachers=["a"])
    assert complete_caches(config) is None                  # b is still missing
    cache_teachers(config, teachers=["b"])
    [(plan, ids)] = complete_caches(config).items()
    assert len(ids) == 2 and len(set(ids)) == 2


def _tasks_config(project, names: list[str]) -> Path:
    root = project.root
    tasks = []
    for i, name in enumerate(names):
        tiny.write_jsonl(root / f"{name}.jsonl", [{"text": t} for t in tiny.sentences(30, seed=20 + i)])
        tasks.append({"name": name, "corpus": {"path": f"{name}.jsonl", "rows_per_shard": 15},
                      "labels": [f"class{2 * i}", f"class{2 * i + 1}"]})
    raw = yaml.safe_load(project.config().read_text())
    del raw["corpus"]
    raw.update(tasks=tasks, student=STUDENT, train=TRAIN, schedule={"cron": "0 * * * *"})
    path = root / "tasks.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.usefixtures("prefect")
def test_a_scheduled_run_caches_a_task_appended_to_the_config(project):
    """What the cache-tasks deployment does on each tick: earlier tasks only checked, the new
    task cached, and the caches complete only once every task is."""
    path = _tasks_config(project, ["t1"])
    first = cache_tasks(str(path))
    assert [s["computed"] for s in first] == [2, 2]
    files = {p: p.read_bytes() for p in project.cache.rglob("shard-*.arrow")}
    path = _tasks_config(project, ["t1", "t2"])              # a new task arrives
    assert complete_caches(load_config(path)) is None
    second = cache_tasks(str(path))
    assert [s["computed"] for s in second] == [0, 0, 2, 2]
    assert {p: p.read_bytes() for p in files} == files
    assert set(complete_caches(load_config(path))) == {s["plan_id"] for s in second}


# ---- a real Prefect server ----------------------------------------------------------------

def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on loopback, its database under its own PREFECT_HOME."""
    url = f"http://127.0.0.1:{free_ports(1)[0]}/api"
    # The scheduler's own loop is pushed out of the tests' way: any scheduled run they see was
    # made when a worker registered its deployments.
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "server-home"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "3600"}
    env.pop("PREFECT_API_URL", None)
    port = url.split(":")[-1].split("/")[0]
    with process([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                   "--port", port], env, tmp_path / "server.log") as server:
        wait_for(lambda: _healthy(url), 180, "prefect server health", server)
        yield url


def _client_env(url: str, home: Path) -> dict:
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(home)}
    return env


def _post(url: str, path: str, body: dict) -> dict | list:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def _get(url: str, path: str) -> dict | list:
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as r:
        return json.load(r)


def _runs(url: str) -> list[dict]:
    """Every flow run on the server: flow name, deployment, state, parameters, times."""
    runs = _post(url, "/flow_runs/filter", {})
    flows = {}
    for run in runs:
        if run["flow_id"] not in flows:
            with urllib.request.urlopen(f"{url}/flows/{run['flow_id']}", timeout=10) as r:
                flows[run["flow_id"]] = json.load(r)["name"]
        run["flow_name"] = flows[run["flow_id"]]
    return runs


def _deployment(url: str, flow: str, name: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/deployments/name/{flow}/{name}", timeout=10) as r:
            return json.load(r)
    except OSError:
        return None


@pytest.mark.slow
def test_serve_on_a_real_server_trains_by_itself_when_the_caches_complete(project, prefect_server, tmp_path):
    url = prefect_server
    config = load_config(_config(project))
    key = config_key(config)
    env = _client_env(url, tmp_path / "client-home")
    with process([sys.executable, "-m", "distill.flows.cli", "serve", config.source], env,
                  tmp_path / "serve.log") as serving:
        caching = wait_for(lambda: _deployment(url, "cache-teachers", key), 240,
                        "caching deployment registered", serving)
        wait_for(lambda: _deployment(url, "train-student", f"{key}-mean"), 30,
              "training deployment registered", serving)
        assert [s["schedule"]["cron"] for s in caching["schedules"]] == ["0 3 * * *"]

        subprocess.run([sys.executable, "-m", "prefect", "deployment", "run",
                        f"cache-teachers/{key}"], env=env, check=True, capture_output=True)
        done = lambda name: [r for r in _runs(url) if r["flow_name"] == name  # noqa: E731
                             and r["state_type"] == "COMPLETED" and r["deployment_id"]]
        [trained] = wait_for(lambda: done("train-student"), 420, "training run completed", serving)
        [cached] = done("cache-teachers")
        assert trained["parameters"] == {"config": str(Path(config.source).resolve()), "method": "mean"}
        assert trained["created_by"]["type"] == "AUTOMATION"
        assert trained["start_time"] >= cached["end_time"]
        report = json.loads((project.root / "run" / "mean" / "report.json").read_text())
        assert report["finished"] and report["method"] == "mean"

        # A second caching run finds nothing to do: no new training run.
        subprocess.run([sys.executable, "-m", "prefect", "deployment", "run",
                        f"cache-teachers/{key}"], env=env, check=True, capture_output=True)
        wait_for(lambda: len(done("cache-teachers")) == 2, 240, "second caching run", serving)
        time.sleep(5)
        assert len([r for r in _runs(url) if r["flow_name"] == "train-student"]) == 1


def _serving(log: Path, proc: subprocess.Popen) -> str:
    """The line `distill serve` prints once its deployments are registered."""
    line = lambda: next((s for s in log.read_text().splitlines() if " serving " in s), None)  # noqa: E731
    return wait_for(line, 240, f"{log.name}: serving", proc)


def _next_three_oclock() -> datetime:
    """The next slot of the tests' cron, `0 3 * * *` in UTC."""
    now = datetime.now(timezone.utc)
    slot = now.replace(hour=3, minute=0, second=0, microsecond=0)
    return slot if slot > now else slot + timedelta(days=1)


def _scheduled(url: str, deployment: dict) -> list[dict]:
    return _post(url, "/flow_runs/filter", {"flow_runs": {
        "deployment_id": {"any_": [deployment["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}})


@pytest.mark.slow
def test_two_workers_share_the_schedule_and_a_restarted_one_crashes_what_it_left(project, prefect_server,
                                                                                 tmp_path):
    """Worker b stops gracefully: the schedule and trigger stay on for worker a. Worker a is
    SIGKILLed holding a run: restarted under its name, it marks that run crashed, reschedules
    the next cron slot at once and serves the next run."""
    url = prefect_server
    config = load_config(_config(project))
    key = config_key(config)
    env = _client_env(url, tmp_path / "client-home")
    serve = lambda worker: [sys.executable, "-m", "distill.flows.cli", "serve", config.source,  # noqa: E731
                            "--worker", worker]
    with process(serve("a"), env, tmp_path / "a.log") as a, \
            process(serve("b"), env, tmp_path / "b.log") as b:
        _serving(tmp_path / "a.log", a)
        _serving(tmp_path / "b.log", b)
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0

        caching = _deployment(url, "cache-teachers", key)
        training = _deployment(url, "train-student", f"{key}-mean")
        assert not caching["paused"] and not training["paused"]
        assert [s["active"] for s in caching["schedules"]] == [True]
        assert _scheduled(url, caching), "the next cron slot was unscheduled"
        automations = _get(url, f"/automations/related-to/prefect.deployment.{training['id']}")
        assert automations and all(auto["enabled"] for auto in automations)

        run = _post(url, f"/deployments/{caching['id']}/create_flow_run", {})
        claimed = lambda: (r := _get(url, f"/flow_runs/{run['id']}"))["state_type"] in (  # noqa: E731
            "PENDING", "RUNNING") and r
        left = wait_for(claimed, 120, "run claimed by worker a", a)
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
        assert "distill-worker:a" in left["tags"]
        assert _get(url, f"/flow_runs/{run['id']}")["state_type"] in ("PENDING", "RUNNING")

    with process(serve("a"), env, tmp_path / "a-again.log") as again:
        assert "1 run(s) it left behind marked crashed" in _serving(tmp_path / "a-again.log", again)
        crashed = _get(url, f"/flow_runs/{run['id']}")
        assert crashed["state_type"] == "CRASHED" and "worker 'a'" in crashed["state"]["message"]
        slots = sorted(r["next_scheduled_start_time"] for r in _scheduled(url, caching))
        assert slots and datetime.fromisoformat(slots[0]) == _next_three_oclock()
        second = _post(url, f"/deployments/{caching['id']}/create_flow_run", {})
        done = lambda: _get(url, f"/flow_runs/{second['id']}")["state_type"] == "COMPLETED"  # noqa: E731
        wait_for(done, 240, "a run served by the restarted worker", again)
