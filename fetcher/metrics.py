"""The fetcher's Prometheus metrics (served by :func:`shared.metrics.serve_metrics`).

Requests and retries are counted by :mod:`fetcher.client` as they happen; what a feed's pass
listed and wrote is added when the feed's pass ends (:func:`fetcher.sync.run_pass`), failed or not,
so the counters always equal what reached the spool.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.metrics import NAMESPACE, new_registry

if TYPE_CHECKING:
    from fetcher.sync import FeedResult

PREFIX = f"{NAMESPACE}_fetcher_"


class FetcherMetrics:
    """The fetcher's counters and gauges, on one registry (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        reg = self.registry
        self.requests = Counter(
            PREFIX + "requests",
            "GET requests to CTX, by the status of the final answer ('error': none came).",
            ["status"],
            registry=reg,
        )
        self.retries = Counter(
            PREFIX + "retries",
            "Requests to CTX repeated by the retry policy, by the status that caused it "
            "('error': a connection or read error).",
            ["reason"],
            registry=reg,
        )
        self.rate_limited = Counter(
            PREFIX + "rate_limited",
            "429 answers from CTX, retried or final.",
            registry=reg,
        )
        self.records = Counter(
            PREFIX + "records",
            "Records read from a feed's objects listing.",
            ["feed"],
            registry=reg,
        )
        self.files_written = Counter(
            PREFIX + "files_written",
            "Files published into the spool, per feed and kind (report or objects bundle).",
            ["feed", "kind"],
            registry=reg,
        )
        self.passes = Counter(
            PREFIX + "feed_passes",
            "Passes over a feed, by result (ok or failed).",
            ["feed", "result"],
            registry=reg,
        )
        self.last_success = Gauge(
            PREFIX + "last_success_timestamp_seconds",
            "Unix time at which a pass over the feed last ended without error.",
            ["feed"],
            registry=reg,
        )

    def answered(self, status: int | None) -> None:
        """A request ended: ``status`` of the final answer, or None when no answer came."""
        self.requests.labels(status="error" if status is None else str(status)).inc()
        if status == 429:
            self.rate_limited.inc()

    def retried(self, status: int | None) -> None:
        """The retry policy repeats a request after an answer with ``status`` (None: no answer)."""
        self.retries.labels(reason="error" if status is None else str(status)).inc()
        if status == 429:
            self.rate_limited.inc()

    def feed_done(self, result: FeedResult) -> None:
        """Add one feed's pass: what it read and wrote, and when it last succeeded."""
        feed = result.feed_id
        self.records.labels(feed=feed).inc(result.records_listed)
        self.files_written.labels(feed=feed, kind="report").inc(result.reports_written)
        self.files_written.labels(feed=feed, kind="objects").inc(result.objects_files_written)
        self.passes.labels(feed=feed, result="ok" if result.ok else "failed").inc()
        if result.ok:
            self.last_success.labels(feed=feed).set(time.time())
