"""Which file goes next: per-feed order, back-off, and dispatch to the worker pool.

Within a feed the files go strictly in name order (names sort by modified time), one import at a
time, so an older version never lands after a newer one; a file waiting for a retry or for a copy
to settle holds back the later files of its feed only. Feeds run in parallel up to the pool's
free slots. All of this state belongs to the pipeline's one loop thread: workers only report
:class:`Result`\\ s (defined here: what the scheduler needs to hear of a file), which the loop
hands to :meth:`Scheduler.apply`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

ResultKind = Literal["done", "failed", "retry", "settling", "wait", "gone", "left", "imported"]


@dataclass(frozen=True)
class Result:
    """What became of one file (or, ``imported``, that its feed may go on)."""

    feed: str
    rel: PurePosixPath
    kind: ResultKind
    delay: float = 0.0
    attempts: int = 0
    #: Walk the feed's folder again (files were put back into incoming/ behind our back).
    rescan: bool = False
    #: The final result of a file whose ``imported`` result already freed its feed.
    released: bool = False


def backoff_delay(attempt: int, initial: float, maximum: float, rand: float) -> float:
    """Exponential back-off with jitter: about ``initial * 2**(attempt-1)``, capped at ``maximum``."""
    base = min(maximum, initial * 2.0 ** min(attempt - 1, 60))
    if base < maximum:
        return min(maximum, base * (1.0 + 0.25 * rand))
    return maximum * (0.8 + 0.2 * rand)


@dataclass
class Feed:
    """One feed's pending files: a set, and a heap of the same names for the oldest in O(log n)."""

    pending: set[PurePosixPath] = field(default_factory=set)
    heap: list[PurePosixPath] = field(default_factory=list)
    busy: bool = False
    not_before: float = 0.0

    def add(self, rel: PurePosixPath) -> None:
        if rel not in self.pending:
            self.pending.add(rel)
            heapq.heappush(self.heap, rel)

    def discard(self, rel: PurePosixPath) -> None:
        # Lazy deletion: head() drops names that are no longer pending.
        self.pending.discard(rel)

    def head(self) -> PurePosixPath:
        while self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        return self.heap[0]


@dataclass
class Counts:
    """What the run did so far (the pipeline's summary and the progress display are made from it)."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    gone: int = 0
    left: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.done + self.failed + len(self.left) + self.gone


class Scheduler:
    """Pending files per feed, their attempts and back-off, and what to start next."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.feeds: dict[str, Feed] = {}
        self.counts = Counts()
        self._attempts: dict[PurePosixPath, int] = {}
        self._ignored: set[PurePosixPath] = set()

    def add(self, rel: PurePosixPath) -> None:
        """A file seen in ``incoming/`` (again, maybe): pending in its feed unless ignored."""
        if rel in self._ignored:
            return
        feed_key = rel.parts[0] if len(rel.parts) > 1 else ""
        self.feeds.setdefault(feed_key, Feed()).add(rel)

    def has_pending(self) -> bool:
        return any(feed.pending for feed in self.feeds.values())

    def pending_count(self) -> int:
        return sum(len(feed.pending) for feed in self.feeds.values())

    def pending(self) -> list[str]:
        return sorted(str(rel) for feed in self.feeds.values() for rel in feed.pending)

    def ready(
        self, free: int, now: float, unscanned: Container[str]
    ) -> list[tuple[str, PurePosixPath, int]]:
        """Up to ``free`` ``(feed, file, attempts)`` to start now, oldest file first, marked busy.

        A feed whose folder the start-up scan has not walked yet (``unscanned``) waits: its
        oldest file may not be known yet.
        """
        if free <= 0:
            # Every slot busy: most turns of the loop end here without looking at every feed.
            return []
        ready = [
            (feed.head(), key)
            for key, feed in self.feeds.items()
            if feed.pending and not feed.busy and feed.not_before <= now and key not in unscanned
        ]
        started = []
        for head, key in sorted(ready)[:free]:
            self.feeds[key].busy = True
            started.append((key, head, self._attempts.get(head, 0)))
        return started

    def next_wakeup(self, now: float) -> float | None:
        """The earliest moment a feed waiting for a back-off becomes ready, if any."""
        moments = [
            feed.not_before
            for feed in self.feeds.values()
            if feed.pending and not feed.busy and feed.not_before > now
        ]
        return min(moments, default=None)

    def apply(self, result: Result) -> PurePosixPath | None:
        """Take a worker's result into account; returns a feed folder to walk again, if any."""
        feed = self.feeds[result.feed]
        rel = result.rel
        if result.kind == "retry":
            self.counts.retried += 1
        if result.released:
            # The feed went on at ``imported``; only the count is left (or, if the move after the
            # import gave up at stop, the file is pending again: it goes back to incoming/).
            self._count(result, feed)
            return None
        feed.busy = False
        if result.kind == "imported":
            feed.discard(rel)
            feed.not_before = 0.0
            self._attempts.pop(rel, None)
            return None
        rescan = PurePosixPath(rel.parts[0]) if result.rescan and len(rel.parts) > 1 else None
        if result.kind in ("retry", "settling", "wait"):
            self._attempts[rel] = result.attempts
            feed.not_before = self.clock() + result.delay
            return rescan
        feed.discard(rel)
        feed.not_before = 0.0
        self._attempts.pop(rel, None)
        self._count(result, feed)
        return rescan

    def _count(self, result: Result, feed: Feed) -> None:
        rel = result.rel
        counts = self.counts
        if result.kind == "retry":
            feed.add(rel)
        elif result.kind == "gone":
            counts.gone += 1
        elif result.kind == "done":
            counts.done += 1
        elif result.kind == "failed":
            counts.failed += 1
        elif result.kind == "left":
            self._ignored.add(rel)
            counts.left.append(str(rel))
