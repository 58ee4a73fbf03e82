"""The fetcher's request metrics (served by :func:`shared.metrics.serve_metrics`): requests to CTX
and their retries, counted by :mod:`fetcher.ctx.client` as they happen. What each feed's pass listed
and wrote is counted by the pass itself (:mod:`fetcher.passes.metrics`), on the same registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shared.metrics import NAMESPACE, new_registry

PREFIX = f"{NAMESPACE}_fetcher_"


class RequestMetrics:
    """Requests to CTX, retries and rate limiting, on ``registry`` (a fresh one unless given)."""

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
