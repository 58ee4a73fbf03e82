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
    #: What the assemble step wrote (the assembler fills this one as it goes).
    counts: Counts = field(default_factory=Counts)
    error: FetcherError | SpoolError | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        counts = self.counts
        text = (
            f"records listed {self.records_listed} ({self.records_kept} new versions), "
            f"reports written {counts.reports_written}, unchanged {counts.reports_unchanged}, "
            f"objects bundles written {counts.objects_files_written} "
            f"({counts.objects_written} objects)"
        )
        if counts.reports_waiting:
            text += f", reports waiting for objects they name {counts.reports_waiting}"
        if counts.reports_incomplete:
            text += f", written without some {counts.reports_incomplete}"
        # The error itself is logged once, where the feed failed (run_pass); not repeated here.
        return text if self.ok else f"FAILED ({text})"


Progress = Callable[[FeedResult], None]
