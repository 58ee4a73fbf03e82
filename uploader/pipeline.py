"""The spool pipeline: intake → scheduler → process → outcome, on one loop thread and a pool.

One loop thread owns all bookkeeping and is fed by one queue: paths from the watchdog observer
(:mod:`uploader.intake.watcher`) and the results of the workers (:mod:`uploader.importing.process`). Each turn it
lets the intake walk what is due, asks the :mod:`uploader.intake.scheduler` which files may start, hands
them to the pool, and applies what comes back. Every file passes each room once, in that order.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from shared.layout import Spool
from shared.signing import SigningKey
from uploader.importing.importer import Importer
from uploader.importing.process import FileProcessor
from uploader.intake.scheduler import Result, Scheduler, backoff_delay
from uploader.intake.watcher import Intake
from uploader.settings import UploaderSettings
from uploader.spool_ops.claim import InstanceLock, reclaim

logger = logging.getLogger(__name__)

# Longest the loop sleeps without looking at the stop flag, deadlines and back-offs.
_TICK = 0.25
_WAITING = ("retry", "settling", "wait", "imported")


@dataclass
class RunSummary:
    """What one run did; ``pending`` files are back in ``incoming/``, ``left`` were not touched."""

    done: int = 0
    failed: int = 0
    reclaimed: int = 0
    pending: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class Pipeline:
    """Imports spool files through an :class:`Importer`, one OpenCTI work per file."""

    def __init__(
        self,
        spool: Spool,
        importer: Importer,
        settings: UploaderSettings,
        lock: InstanceLock,
        *,
        signing_key: SigningKey | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self.spool = spool
        self.importer = importer
        self.settings = settings
        self.lock = lock
        self.clock = clock
        self.rand = rand
        #: Told every result as it is applied (the metrics count them).
        self.on_result = on_result
        self.events: queue.SimpleQueue[Path | Result] = queue.SimpleQueue()
        # Set when the run is stopping: workers retrying a move after an import give up.
        self._stopping = threading.Event()
        self.scheduler = Scheduler(clock)
        self.processor = FileProcessor(
            spool,
            importer,
            lock,
            settings,
            signing_key=signing_key,
            retry_delay=self._retry_delay,
            early=self.events.put,
            stopping=self._stopping,
            clock=clock,
        )
        self.intake = Intake(
            spool,
            lock,
            self.scheduler.add,
            clock,
            polling=settings.polling,
            poll_interval=settings.poll_interval,
        )

    def run(
        self, stop: threading.Event, *, watch: bool, max_wait: float | None = None
    ) -> RunSummary:
        """Import until ``stop`` is set (``watch``) or until nothing is left to do (once).

        With ``max_wait`` a run gives up after that many seconds without any file finishing (an
        outage: every import is being retried): the files still pending are left in
        ``incoming/``. A long but healthy run is never cut short. The lock must be held by the
        caller.
        """
        self.spool.ensure()
        self._stopping.clear()
        reclaimed = reclaim(self.spool, self.lock, own=True)
        if watch:
            # Watch first, then scan: a file published in between is seen at least once.
            self.intake.watch(self.events.put)
        # The absolute path: SPOOL_DIR's default is relative to the working directory.
        logger.info(
            "uploader started (%s), instance %r, spool %s",
            "watch" if watch else "once",
            self.lock.instance,
            self.spool.root.absolute(),
            extra={"spool": str(self.spool.root.absolute()), "reclaimed": reclaimed},
        )
        try:
            self.intake.start_scan()
            self._loop(stop, watch=watch, max_wait=max_wait)
        finally:
            self.intake.stop()
            # Anything still claimed goes back to incoming/ for the next run (never lost).
            reclaim(self.spool, self.lock, own=True)
        counts = self.scheduler.counts
        summary = RunSummary(
            done=counts.done,
            failed=counts.failed,
            reclaimed=reclaimed + self.intake.reclaimed,
            pending=self.scheduler.pending(),
            left=list(counts.left),
        )
        logger.info(
            "uploader %s stopped: %d done, %d failed, %d pending",
            self.lock.instance,
            summary.done,
            summary.failed,
            len(summary.pending),
        )
        return summary

    def _loop(self, stop: threading.Event, *, watch: bool, max_wait: float | None) -> None:
        start = self.clock()
        deadline = None if max_wait is None else start + max_wait
        finished = self.scheduler.counts.finished
        next_rescan = start + self.settings.rescan_interval
        # Imports running (at most ``concurrency``); a worker that finishes a file after its
        # import no longer counts, so the pool has room for as many of those again.
        in_flight = 0
        finishing = 0
        with ThreadPoolExecutor(
            max_workers=2 * self.settings.concurrency, thread_name_prefix="uploader-worker"
        ) as pool:
            while True:
                now = self.clock()
                if watch and now >= next_rescan:
                    self.intake.rescan()
                    next_rescan = now + self.settings.rescan_interval
                self.intake.turn(now)
                stopping = stop.is_set() or (deadline is not None and now >= deadline)
                if stopping:
                    self._stopping.set()
                else:
                    free = self.settings.concurrency - in_flight
                    for feed, rel, attempts in self.scheduler.ready(
                        free, now, self.intake.unscanned
                    ):
                        future = pool.submit(self.processor.process_safely, feed, rel, attempts)
                        future.add_done_callback(self._forward(feed, rel, attempts))
                        in_flight += 1
                idle = not self.scheduler.has_pending() and not self.intake.scanning
                if in_flight == 0 and finishing == 0 and (stopping or (not watch and idle)):
                    return
                timeout = self._next_wakeup(now, next_rescan if watch else None, deadline)
                try:
                    event = self.events.get(timeout=0.0 if self.intake.scanning else timeout)
                except queue.Empty:
                    continue
                while True:
                    if isinstance(event, Result):
                        if event.kind == "imported":
                            in_flight -= 1
                            finishing += 1
                        elif event.released:
                            finishing -= 1
                        else:
                            in_flight -= 1
                        self._apply(event)
                    else:
                        self.intake.path_seen(event)
                    if max_wait is not None and self.scheduler.counts.finished != finished:
                        finished = self.scheduler.counts.finished
                        deadline = self.clock() + max_wait
                    try:
                        event = self.events.get_nowait()
                    except queue.Empty:
                        break

    def _apply(self, result: Result) -> None:
        rescan = self.scheduler.apply(result)
        if self.on_result is not None:
            self.on_result(result)
        if rescan is not None:
            self.intake.scan_feed(rescan)
        if result.kind not in _WAITING:
            self.processor.settling.forget(result.rel)

    def _next_wakeup(self, now: float, next_rescan: float | None, deadline: float | None) -> float:
        wake = now + _TICK
        for moment in (self.scheduler.next_wakeup(now), next_rescan, deadline):
            if moment is not None:
                wake = min(wake, moment)
        return max(0.01, wake - now)

    def _forward(
        self, feed: str, rel: PurePosixPath, attempts: int
    ) -> Callable[[Future[Result]], None]:
        def done(future: Future[Result]) -> None:
            exc = future.exception()
            if exc is None:
                self.events.put(future.result())
                return
            # process_safely catches everything; this is a last resort so the feed never stays
            # busy forever.
            logger.error("worker crashed on %s: %r", rel, exc, extra={"file": str(rel)})
            delay = self._retry_delay(attempts + 1)
            self.events.put(Result(feed, rel, "retry", delay, attempts + 1))

        return done

    def _retry_delay(self, attempts: int) -> float:
        return backoff_delay(
            attempts, self.settings.retry_initial, self.settings.retry_max, self.rand()
        )
