"""What one pass did for one feed, and the hook that shows it while the pass runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fetcher.errors import FetcherError
from fetcher.files.assemble import Counts
from shared.errors import SpoolError


@dataclass
class FeedResult:
    """What one pass did for one feed; ``error`` is set when the feed failed."""

    feed_id: str
    records_listed: int = 0
    records_kept: int = 0
    reports_written: int = 0
    reports_unchanged: int = 0
    objects_files_written: int = 0
    objects_written: int = 0
    reports_waiting: int = 0
    reports_incomplete: int = 0
    error: FetcherError | SpoolError | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def files_written(self) -> int:
        return self.reports_written + self.objects_files_written

    def take(self, counts: Counts) -> None:
        self.reports_written = counts.reports_written
        self.reports_unchanged = counts.reports_unchanged
        self.objects_files_written = counts.objects_files_written
        self.objects_written = counts.objects_written
        self.reports_waiting = counts.reports_waiting
        self.reports_incomplete = counts.reports_incomplete

    def summary(self) -> str:
        text = (
            f"records listed {self.records_listed} ({self.records_kept} new versions), "
            f"reports written {self.reports_written}, unchanged {self.reports_unchanged}, "
            f"objects bundles written {self.objects_files_written} "
            f"({self.objects_written} objects)"
        )
        if self.reports_waiting:
            text += f", reports waiting for objects they name {self.reports_waiting}"
        if self.reports_incomplete:
            text += f", written without some {self.reports_incomplete}"
        # The error itself is logged once, where the feed failed (run_pass); not repeated here.
        return text if self.ok else f"FAILED ({text})"


Progress = Callable[[FeedResult], None]
