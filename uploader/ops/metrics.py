"""The uploader's Prometheus metrics (served by :func:`shared.metrics.serve_metrics`).

Counted where things happen: a file's end (done, failed) or its retry by the pipeline
(:meth:`UploaderMetrics.result`), each push and each failed call to OpenCTI by the importer.
What only a look at the spool can tell (files and bytes per state and feed, the age of the oldest
pending file) is computed when Prometheus scrapes, from the same walk as ``ctx-uploader status``,
so the two always agree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from shared.layout import Spool
from shared.metrics import NAMESPACE, GaugeSamples, ScrapeGauges, new_registry
from uploader.errors import (
    ImportFailure,
    PermanentImportError,
    PlatformAuthError,
    WorkErrorsError,
)
from uploader.intake.scheduler import Result
from uploader.spool_ops.status import Status, Tally, status

PREFIX = f"{NAMESPACE}_uploader_"

#: The spool is walked at most once per this many seconds, however many families a scrape reads.
_WALK_REUSE_SECONDS = 1.0

_OUTCOMES = {"done": "done", "failed": "failed", "retry": "retried"}


class UploaderMetrics:
    """The uploader's counters, and the spool's gauges computed at scrape time."""

    def __init__(self, spool: Spool, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self._spool = spool
        self._lock = threading.Lock()
        self._walked: tuple[float, Status] | None = None
        reg = self.registry
        self.imports = Counter(
            PREFIX + "imports",
            "Files whose import ended (done: in done/, failed: in failed/) or was put back to be "
            "retried after a transient failure (retried), per feed.",
            ["feed", "outcome"],
            registry=reg,
        )
        self.pushes = Counter(
            PREFIX + "pushes",
            "Bundles accepted by OpenCTI (a file cut into parts counts each part).",
            registry=reg,
        )
        self.platform_errors = Counter(
            PREFIX + "platform_errors",
            "Failed imports by what OpenCTI answered: unreachable (no answer), transient "
            "(5xx, 429, starting), auth (token or connector refused), rejected (the bundle), "
            "work_errors (the workers' errors on a completed work).",
            ["kind"],
            registry=reg,
        )
        self.reregistrations = Counter(
            PREFIX + "connector_registrations",
            "Times the connector was registered again because OpenCTI no longer knew it.",
            registry=reg,
        )
        ScrapeGauges(
            reg,
            PREFIX + "spool_files",
            "Bundle files per spool state and feed (as ctx-uploader status counts them).",
            ("state", "feed"),
            self._per_feed(lambda tally: tally.files),
        )
        ScrapeGauges(
            reg,
            PREFIX + "spool_bytes",
            "Bytes of bundle files per spool state and feed.",
            ("state", "feed"),
            self._per_feed(lambda tally: tally.bytes),
        )
        ScrapeGauges(
            reg,
            PREFIX + "oldest_pending_age_seconds",
            "Age (by modification time) of the oldest file in incoming/ or processing/; 0 when none.",
            (),
            lambda: [((), self._status().oldest_pending_age or 0.0)],
        )

    def result(self, result: Result) -> None:
        """Count one file's result as the pipeline applies it."""
        outcome = _OUTCOMES.get(result.kind)
        if outcome is not None:
            self.imports.labels(feed=result.feed, outcome=outcome).inc()

    def pushed(self) -> None:
        self.pushes.inc()

    def platform_error(self, failure: ImportFailure, *, unreachable: bool) -> None:
        self.platform_errors.labels(kind=error_kind(failure, unreachable=unreachable)).inc()

    def registered_again(self) -> None:
        self.reregistrations.inc()

    def _status(self) -> Status:
        with self._lock:
            now = time.monotonic()
            if self._walked is None or now - self._walked[0] > _WALK_REUSE_SECONDS:
                self._walked = (now, status(self._spool))
            return self._walked[1]

    def _per_feed(self, value: Callable[[Tally], int]) -> GaugeSamples:
        def samples() -> list[tuple[tuple[str, str], float]]:
            result = self._status()
            return [
                ((state, feed), float(value(tally)))
                for feed, by_state in sorted(result.feeds.items())
                for state, tally in by_state.items()
            ]

        return samples


def error_kind(failure: ImportFailure, *, unreachable: bool) -> str:
    """The ``kind`` label of a failed import."""
    if unreachable:
        return "unreachable"
    if isinstance(failure, PlatformAuthError):
        return "auth"
    if isinstance(failure, WorkErrorsError):
        return "work_errors"
    if isinstance(failure, PermanentImportError):
        return "rejected"
    return "transient"
