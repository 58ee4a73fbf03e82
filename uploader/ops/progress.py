"""``ctx-uploader once`` on a terminal: files done, failed and pending, and files per second, on a
live line with the log lines printed above it (:mod:`shared.console`). Off a terminal there is no
display and nothing but log lines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from shared.console import live_progress, showing
from uploader.intake.scheduler import Result, Scheduler

if TYPE_CHECKING:
    from rich.console import Console


class RunProgress:
    """The live line of one run on ``console``: the ``scheduler``'s counts and pending files."""

    def __init__(
        self,
        console: Console,
        scheduler: Scheduler,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._started = clock()
        self._progress = live_progress(console)
        self._task = self._progress.add_task("importing", total=None, detail=self._detail())

    def _detail(self) -> str:
        counts = self._scheduler.counts
        elapsed = max(self._clock() - self._started, 1e-6)
        rate = (counts.done + counts.failed) / elapsed
        retried = f", retried {counts.retried}" if counts.retried else ""
        return (
            f"done {counts.done}, failed {counts.failed}, "
            f"pending {self._scheduler.pending_count()}{retried} ({rate:.1f} files/s)"
        )

    def update(self, result: Result) -> None:
        """Redraw after a file's result (called by the pipeline's loop thread, once applied)."""
        if result.kind in ("done", "failed", "retry"):
            self._progress.update(self._task, detail=self._detail())

    @contextlib.contextmanager
    def live(self) -> Iterator[RunProgress]:
        """Show the line and route log records above it while inside."""
        with showing(self._progress):
            yield self
