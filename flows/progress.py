"""Progress of long work, reported by flows and shown by the command line.

Flows run in the CLI's process (Prefect's embedded mode), so a module-level reporter is
enough; without one (a worker, a test) progress goes nowhere.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class Reporter:
    """Does nothing; the default."""

    def start(self, key: str, description: str, total: int | None, unit: str = "rows") -> None: ...

    def advance(self, key: str, n: int) -> None: ...


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "rows")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


class RichReporter(Reporter):
    """A rich progress bar per key: items done, items/s, elapsed time and ETA."""

    def __init__(self, console: Console | None = None):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(), console=console)
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, key: str, description: str, total: int | None, unit: str = "rows") -> None:
        with self._lock:
            if key in self._tasks:
                self.progress.reset(self._tasks[key], total=total, description=description, unit=unit)
            else:
                self._tasks[key] = self.progress.add_task(description, total=total, unit=unit)

    def advance(self, key: str, n: int) -> None:
        if key in self._tasks:
            self.progress.advance(self._tasks[key], n)


_reporter: Reporter = Reporter()


def reporter() -> Reporter:
    return _reporter


@contextmanager
def reporting(new: Reporter) -> Iterator[Reporter]:
    global _reporter
    previous, _reporter = _reporter, new
    try:
        if isinstance(new, RichReporter):
            with new.progress:
                yield new
        else:
            yield new
    finally:
        _reporter = previous
