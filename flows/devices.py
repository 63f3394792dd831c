"""Teachers side by side on the devices of one machine, without a cluster (`runner.devices`).

Each teacher run takes a free device from the pool and holds it until the run ends, so a
device never runs two teachers at once and a teacher that finishes early frees its device for
the next one. The pool alone covers one `distill cache` process. A Prefect global concurrency
limit per device (`device:<host>:<device>`, one slot) also keeps other processes that report
to the same Prefect server (a scheduled run beside a manual one) off a device in use; under
Prefect's embedded server each process has its own limits, so there the pool is what counts.
"""

from __future__ import annotations

import queue
import socket
from contextlib import contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from distill.pipeline.config import DistillConfig


def limit_name(device: str) -> str:
    return f"device:{socket.gethostname().lower()}:{device}"


class DevicePool:
    def __init__(self, devices: list[str]):
        self._free: queue.Queue[str] = queue.Queue()
        for device in devices:
            self._free.put(device)
        _ensure_limits([limit_name(d) for d in devices])

    @contextmanager
    def lease(self) -> Iterator[str]:
        """A device no other teacher run holds, for the duration of the block."""
        device = self._free.get()
        try:
            # A lost lease renewal (server hiccup) must not cancel an hours-long teacher run.
            with concurrency(limit_name(device), occupy=1, strict=True,
                             raise_on_lease_renewal_failure=False):
                yield device
        finally:
            self._free.put(device)


def _ensure_limits(names: list[str]) -> None:
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                except ObjectAlreadyExists:  # another process created it meanwhile
                    pass


def pinned(config: DistillConfig, teacher: str, device: str) -> DistillConfig:
    """`config` with teacher `teacher` on `device` (its id does not change: device is not an
    output setting)."""
    teachers = [t.model_copy(update={"device": device}) if t.name == teacher else t
                for t in config.teachers]
    return config.model_copy(update={"teachers": teachers})
