"""What each feed's pass listed and wrote, as Prometheus metrics: added when the feed's pass ends
(:func:`fetcher.passes.run.run_pass`), failed or not, so the counters always equal what reached the spool.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from fetcher.ctx.metrics import PREFIX
from fetcher.passes.result import FeedResult


class PassMetrics:
    """Per-feed counters of the passes, on ``registry`` (the one the request metrics use)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            PREFIX + "records",
            "Records read from a feed's objects listing.",
            ["feed"],
            registry=registry,
        )
        self.files_written = Counter(
            PREFIX + "files_written",
            "Files published into the spool, per feed and kind (report or objects bundle).",
            ["feed", "kind"],
            registry=registry,
        )
        self.passes = Counter(
            PREFIX + "feed_passes",
            "Passes over a feed, by result (ok or failed).",
            ["feed", "result"],
            registry=registry,
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time at which a pass over the feed last ended without error.",
            ["feed"],
            registry=registry,
        )

    def feed_done(self, result: FeedResult) -> None:
        """Add one feed's pass: what it read and wrote, and when it last succeeded."""
        feed, counts = result.feed_id, result.counts
        self.records.labels(feed=feed).inc(result.records_listed)
        self.files_written.labels(feed=feed, kind="report").inc(counts.reports_written)
        self.files_written.labels(feed=feed, kind="objects").inc(counts.objects_files_written)
        self.passes.labels(feed=feed, result="ok" if result.ok else "failed").inc()
        if result.ok:
            self.last_success.labels(feed=feed).set(time.time())
