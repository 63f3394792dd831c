"""Killing a command leaves none of the processes it started running (the Prefect server above
all): real `distill` subprocesses, killed with SIGKILL or SIGTERM once they are at work."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

import tiny
from distill.flows.server import die_with_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")


def start(args: list[str], root: Path, **settings: str) -> subprocess.Popen:
    """`distill ARGS` in its own session, without a configured Prefect API (so the command
    needs a server of its own) and with these extra environment `settings`; it dies with this
    test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(root / "prefect-home"), **settings)
    return subprocess.Popen([sys.executable, "-m", "distill.flows.cli", *args], cwd=root, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=die_with_parent())


def wait_for(ready, process: subprocess.Popen, timeout: float = 240) -> list[psutil.Process]:
    """Once `ready()`, the command's descendants (at least the server must be among them)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the command ended early with status {process.returncode}"
        assert time.monotonic() < deadline, "the command never got to work"
        time.sleep(0.2)
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("prefect.server" in " ".join(c.cmdline()) for c in children), children
    return children


def survivors(children: list[psutil.Process], grace: float = 10) -> list[psutil.Process]:
    deadline = time.monotonic() + grace
    while True:
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def kill_and_check(process: subprocess.Popen, children: list[psutil.Process], sig: int) -> None:
    try:
        os.kill(process.pid, sig)
        process.wait(timeout=30)
        assert not survivors(children)
    finally:
        for child in survivors(children, grace=0):
            child.kill()
        if process.poll() is None:
            process.kill()


def write_config(root: Path, rows: int, **overrides) -> Path:
    tiny.write_jsonl(root / "corpus.jsonl", [{"text": t} for t in tiny.sentences(rows, seed=3)])
    tiny.classifier(root / "teacher-a", seed=1)
    raw = {"cache": "cache", "corpus": {"path": "corpus.jsonl", "rows_per_shard": 10},
           "teachers": [{"name": "a", "model": "teacher-a", "max_length": 16, "batch_size": 2}],
           **overrides}
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return root / "config.yaml"


def shards(root: Path) -> list[Path]:
    return list((root / "cache").rglob("*.arrow"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_cache_leaves_no_process(tmp_path, sig):
    config = write_config(tmp_path, rows=4000)
    process = start(["cache", str(config)], tmp_path)
    children = wait_for(lambda: len(shards(tmp_path)) > 2, process)
    kill_and_check(process, children, sig)


def server_url(process: subprocess.Popen) -> str:
    """The API of the Prefect server the command started (its uvicorn child's --port)."""
    for child in psutil.Process(process.pid).children(recursive=True):
        line = child.cmdline()
        if "prefect.server.api.server:create_app" in line:
            return f"http://127.0.0.1:{line[line.index('--port') + 1]}/api"
    raise AssertionError("the command started no Prefect server")


def test_killed_serve_leaves_no_flow_run(tmp_path):
    """SIGKILL of `distill serve` while a caching run it started (in a subprocess of its own)
    is at work: the run ends with it, as does the server."""
    config = write_config(tmp_path, rows=4000, schedule={"cron": "0 2 * * *"})
    process = start(["serve", str(config)], tmp_path, PREFECT_RUNNER_POLL_FREQUENCY="1")
    wait_for(lambda: (tmp_path / "prefect-home" / "prefect.db").exists(), process)
    with httpx.Client(base_url=server_url(process), timeout=30) as api:
        def registered() -> list[dict]:
            try:
                return [d for d in api.post("/deployments/filter", json={}).json() if "cache" in d["tags"]]
            except httpx.TransportError:  # not answering yet
                return []

        wait_for(registered, process)
        url = f"/deployments/{registered()[0]['id']}/create_flow_run"
        wait_for(lambda: api.post(url, json={}).status_code == 201, process)  # 503 while busy
    children = wait_for(lambda: len(shards(tmp_path)) > 2, process)
    assert any("prefect.engine" in c.cmdline() for c in children), [c.cmdline() for c in children]
    kill_and_check(process, children, signal.SIGKILL)


@pytest.fixture(scope="module")
def cached(tmp_path_factory, prefect) -> Path:
    """A folder whose config has complete caches and trains for long, checkpointing often."""
    from typer.testing import CliRunner

    from distill.flows.cli import app

    root = tmp_path_factory.mktemp("train")
    config = write_config(root, rows=200, student={"from_teacher": "a", "layers": 1},
                          train={"epochs": 200, "batch_size": 8, "checkpoint_every": 2,
                                 "output": "runs"})
    result = CliRunner().invoke(app, ["cache", str(config)])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_train_leaves_no_process(cached, sig):
    process = start(["train", str(cached / "config.yaml"), "--output", f"runs-{sig.name}"], cached)
    children = wait_for(lambda: any((cached / f"runs-{sig.name}").rglob("checkpoints/*")), process)
    kill_and_check(process, children, sig)
