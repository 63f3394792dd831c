"""Killing a command leaves none of the processes it started running (the Prefect server above
all): real `distill` subprocesses, killed with SIGKILL or SIGTERM once they are at work."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

import tiny
from distill.flows.server import die_with_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")


def start(args: list[str], root: Path) -> subprocess.Popen:
    """`distill ARGS` in its own session, without a configured Prefect API (so the command
    needs a server of its own); it dies with this test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(root / "prefect-home")
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


def test_killed_serve_leaves_no_process(tmp_path):
    config = write_config(tmp_path, rows=20, schedule={"cron": "0 2 * * *"})
    process = start(["serve", str(config)], tmp_path)

    def serving() -> bool:
        tree = psutil.Process(process.pid).children(recursive=True)
        return any("prefect.server" in " ".join(c.cmdline()) for c in tree) and \
            (tmp_path / "prefect-home" / "prefect.db").exists()

    children = wait_for(serving, process)
    time.sleep(3)  # registering the deployments
    kill_and_check(process, children, signal.SIGKILL)
