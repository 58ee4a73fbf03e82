"""``ctx-uploader once`` on a terminal: files done, failed and pending, and files per second, on a
live line with the log lines printed above it (:mod:`shared.console`). Off a terminal there is no
display and nothing but log lines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console

from shared.console import live_progress, showing
from uploader.intake.scheduler import Result


class RunProgress:
    """The live line of one run on ``console``; ``pending`` counts the files still to do."""

    def __init__(
        self,
        console: Console,
        pending: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pending = pending
        self._clock = clock
        self._started = clock()
        self.done = 0
        self.failed = 0
        self.retried = 0
        self._progress = live_progress(console)
        self._task = self._progress.add_task("importing", total=None, detail=self.detail())

    def detail(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-6)
        rate = (self.done + self.failed) / elapsed
        retried = f", retried {self.retried}" if self.retried else ""
        return (
            f"done {self.done}, failed {self.failed}, pending {self._pending()}{retried} "
            f"({rate:.1f} files/s)"
        )

    def update(self, result: Result) -> None:
        """Count one result (called by the pipeline's loop thread, after it applied it)."""
        if result.kind == "done":
            self.done += 1
        elif result.kind == "failed":
            self.failed += 1
        elif result.kind == "retry":
            self.retried += 1
        else:
            return
        self._progress.update(self._task, detail=self.detail())

    @contextlib.contextmanager
    def live(self) -> Iterator[RunProgress]:
        """Show the line and route log records above it while inside."""
        with showing(self._progress):
            yield self
