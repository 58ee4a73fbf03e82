"""The fetcher's progress on a terminal: a line per feed, with the log lines printed above it
(:mod:`shared.console`). Off a terminal there is no display and nothing but log lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import TaskID

from fetcher.passes.result import FeedResult
from fetcher.passes.result import Progress as ProgressCallback
from shared.console import live_progress, showing


class PassProgress:
    """One pass's live display on ``console`` (a terminal)."""

    def __init__(self, console: Console) -> None:
        self._progress = live_progress(console)
        self._tasks: dict[str, TaskID] = {}
        self._current: TaskID | None = None

    def update(self, result: FeedResult) -> None:
        """Show ``result``'s counts (called from the thread that runs the pass)."""
        # Short enough for an 80-column terminal with the feed's id shortened to its first part.
        counts = result.counts
        detail = (
            f"{result.records_listed} records, {counts.reports_written} reports, "
            f"{counts.objects_files_written} objects files"
        )
        if counts.reports_waiting:
            detail += f", {counts.reports_waiting} waiting"
        task = self._tasks.get(result.feed_id)
        if task is None:
            if self._current is not None:
                # Feeds run one after another: a new feed means the last one is done.
                self._progress.update(self._current, total=1, completed=1)
            label = f"{result.feed_id.split('-', 1)[0]}…"
            task = self._progress.add_task(label, total=None, detail=detail)
            self._tasks[result.feed_id] = task
            self._current = task
        else:
            self._progress.update(task, detail=detail)

    @contextlib.contextmanager
    def live(self) -> Iterator[ProgressCallback]:
        """Show the display and route log records above it while inside."""
        with showing(self._progress):
            yield self.update
