"""Processes a test starts and must stop even when it fails: `distill serve`, a Prefect server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """`check()`'s first true value, polled each second; fails after `timeout` s, or at once
    when `proc` has exited (its output is in its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if (value := check()):
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Stop `proc`'s whole process group with `sig` (SIGKILL after 30 s)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def process(args: list[str], env: dict, log: Path, sig: int = signal.SIGINT):
    """`args` started in a session of its own (its output in `log`), stopped with `sig` at the
    end of the block whatever happens in it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            stop(proc, sig)
