"""The Prefect API server of one command, which dies with the command however it ends.

Without PREFECT_API_URL, Prefect starts a server subprocess of its own and stops it from an
atexit hook; SIGKILL and SIGTERM skip that hook and leave the server running. So a command
starts the same server itself (Prefect's uvicorn command, on loopback and a free port) with
PR_SET_PDEATHSIG, which makes the kernel kill it when the command dies, and points
PREFECT_API_URL at it. Starting it before the heavy imports lets both proceed at once.

The flow runs of `distill serve` are started by Prefect's runner as subprocesses, which nothing
stops when the runner is SIGKILLed: `exit_with_parent` ends them with it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

PR_SET_PDEATHSIG = 1
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# Defaults the caller's environment may override. Telemetry is off because machines running
# distill are often offline, where the server's telemetry task logs an ERROR at every start
# (the CLI sets this too; the Python API path, distill.cache, did not).
SERVER_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel SIGKILL the child when this process dies (Linux;
    elsewhere None). The death signal follows the thread that starts the child, so start
    long-lived children from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def exit_with_parent(*_hook_arguments) -> None:
    """An `on_running` hook of the flows `distill serve` deploys. Prefect's runner starts each
    of their runs in a subprocess (`python -m prefect.engine` with PREFECT__FLOW_RUN_ID set, or
    a spawned `multiprocessing` child) that nothing stops when the runner is SIGKILLed; there a
    daemon thread ends the process as soon as its parent is gone. A run in the command's own
    process (`distill cache`, `distill train`) is left alone."""
    parent = multiprocessing.parent_process()
    if parent is not None:  # its sentinel is a pipe only the parent holds open
        orphaned = functools.partial(multiprocessing.connection.wait, [parent.sentinel])
    elif "PREFECT__FLOW_RUN_ID" in os.environ:
        orphaned = functools.partial(_until_reparented, os.getppid())
    else:
        return
    threading.Thread(target=_exit_after, args=(orphaned,), daemon=True, name="exit-with-parent").start()


def _until_reparented(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)


def _exit_after(orphaned: Callable[[], object]) -> None:
    orphaned()
    os._exit(1)  # at once, like the SIGKILL its parent got: no Prefect API is left to report to


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """Prefect's server in a child process; `wait` until it answers, `stop` when done."""

    def __init__(self) -> None:
        self.port = _free_port()
        app_dir = Path(importlib.util.find_spec("prefect").origin).parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env={**SERVER_DEFAULTS, **os.environ, **SERVER_ENV}, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent())

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float) -> None:
        """Block until the server's health check answers; RuntimeError if it exits or is late."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the Prefect server exited with status "
                                       f"{self.process.returncode} while starting")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the Prefect server did not answer within {timeout:.0f} s; raise "
                           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS or set PREFECT_API_URL")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_api_server() -> ApiServer | None:
    """The server process of `api_server`, started now, or None when PREFECT_API_URL names
    one: a command that may not need it (flows/cli.py, `distill cache` with nothing to
    compute) starts it before finding out, so that the check costs no time when it does."""
    return None if os.environ.get("PREFECT_API_URL") else ApiServer()


@contextmanager
def api_server(preload: tuple[str, ...] = (), started: ApiServer | None = None) -> Iterator[None]:
    """Within: a Prefect API for this process (and the subprocesses it starts). An API that is
    already configured (PREFECT_API_URL, a profile, a test harness) is used as it is.

    The server process starts first, then the `preload` modules are imported while it starts
    (a command's flows, torch, transformers: as long as the server takes, on another core), and
    only then does this wait for it. Whether a profile configures an API is known only once
    Prefect is imported; then the server started early is stopped unused. `started`: a server
    of `start_api_server`, which this then stops."""
    server = started if started is not None else start_api_server()
    try:
        for module in preload:
            importlib.import_module(module)
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
            temporary_settings,
        )

        if server is None or PREFECT_API_URL.value():
            yield
            return
        os.environ["PREFECT_API_URL"] = server.api_url  # for flow-run subprocesses
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                server.wait(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
                yield
        finally:
            os.environ.pop("PREFECT_API_URL", None)
    finally:
        if server is not None:
            server.stop()
