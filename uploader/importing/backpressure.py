"""Backpressure: no new push while the connector's queue on the platform is over a threshold.

OpenCTI queues every pushed bundle in the connector's RabbitMQ queue and its workers drain it at
their own pace; pushing faster than they ingest only fills RabbitMQ. pycti's scheduler checks the
queue before each run of a connector (``OpenCTIConnectorHelper.check_connector_buffering``:
``connector_queue_details.messages_size`` in bytes, compared in decimal megabytes with
``CONNECTOR_QUEUE_THRESHOLD``, default 500). The uploader makes the same comparison before each
push, asking at most once per ``check_interval`` seconds; while the queue is over the threshold
every import waits, and the pause is logged once with the size, and its end once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Seconds between two looks at the queue (pycti's own check runs once per scheduled period).
CHECK_INTERVAL = 10.0


class QueuePaused(Exception):  # noqa: N818 - a state, not an error of ours
    """The gate was closed (the uploader is stopping) while the queue was over the threshold."""


class QueueGate:
    """Lets pushes through while ``measure()`` (the queue's size in MB) is under ``threshold_mb``.

    ``measure`` may raise: a failed look lets pushes through (the push itself then meets the
    outage and is retried as any other failure). Thread-safe: one thread measures, the others
    wait for its answer.
    """

    def __init__(
        self,
        measure: Callable[[], float],
        threshold_mb: float,
        *,
        check_interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._measure = measure
        self._threshold = threshold_mb
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._paused_at: float | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        """Wake every waiting import: it raises :class:`QueuePaused`."""
        self._closed.set()

    def wait(self) -> None:
        """Return when a push may go; raise :class:`QueuePaused` if closed while waiting."""
        while True:
            with self._lock:
                now = self._clock()
                if now >= self._next_check:
                    self._look(now)
                if self._paused_at is None:
                    return
                delay = max(0.0, self._next_check - now)
            if self._closed.wait(delay):
                raise QueuePaused("stopping while the connector's queue is over its threshold")

    def _look(self, now: float) -> None:
        self._next_check = now + self._interval
        try:
            size = self._measure()
        except Exception as exc:  # noqa: BLE001 - a look that fails must not stop imports
            logger.warning("cannot read the connector's queue size: %s", exc)
            size = 0.0
        if size >= self._threshold:
            if self._paused_at is None:
                self._paused_at = now
                logger.warning(
                    "pausing pushes: the connector's queue holds %.1f MB, over "
                    "CONNECTOR_QUEUE_THRESHOLD=%g MB",
                    size,
                    self._threshold,
                    extra={"queue_mb": size, "threshold_mb": self._threshold},
                )
        elif self._paused_at is not None:
            logger.info(
                "resuming pushes: the connector's queue is down to %.1f MB after %.0f s",
                size,
                now - self._paused_at,
                extra={"queue_mb": size, "threshold_mb": self._threshold},
            )
            self._paused_at = None
