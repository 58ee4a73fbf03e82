"""The objects listing of a feed read by several threads at once, a segment of time each
(:mod:`fetcher.ctx.segments`), and handed to the consumer in groups of pages.

The consumer applies each group in one commit and says so (:meth:`ListingReader.applied`); the
cursor safe to save after that is :meth:`ListingReader.checkpoint`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from fetcher.ctx.client import CTXClient
from fetcher.ctx.listing import NumberedWalk, open_walk
from fetcher.ctx.segments import Segment, Segments, reach
from fetcher.ctx.walk import PageLimit, Step

_WAIT = 0.1
#: Pages applied in one commit at most.
GROUP = 16


@dataclass(frozen=True)
class Item:
    """A step of one segment, handed to the consumer."""

    segment: Segment
    step: Step


class ListingReader:
    """Iterates :class:`Item` s of a feed's listing from ``cursor``, ``workers`` segments at once.

    The consumer applies each item, then calls :meth:`applied`; :meth:`checkpoint` is the cursor
    safe to save after that. :meth:`close` stops every thread.
    """

    def __init__(
        self,
        client: CTXClient,
        feed_id: str,
        cursor: str | None,
        *,
        workers: int,
        buffered: int,
        hold: str | None = None,
    ) -> None:
        """``hold``: no segment is cut before the first walk has read past it (an incremental
        pass starts an overlap below its saved cursor: those few pages are read by one walk, and
        what lies beyond is cut only when there is something)."""
        self._limit = PageLimit()
        first = open_walk(client, feed_id, cursor, self._limit)
        self.paged = isinstance(first, NumberedWalk)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._queue: queue.Queue[Item | BaseException | None] = queue.Queue(maxsize=buffered)
        self._workers = 1 if self.paged else max(1, workers)
        self._segments = Segments(
            client,
            feed_id,
            Segment(first, cursor),
            workers=self._workers,
            limit=self._limit,
            hold=hold,
        )
        self._running = self._workers
        self._threads = [
            threading.Thread(target=self._work, name=f"ctx-listing-{i}", daemon=True)
            for i in range(self._workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def segments(self) -> int:
        """How many segments were made (for logs and tests)."""
        with self._cond:
            return len(self._segments.items)

    def _claim(self) -> Segment | None:
        with self._cond:
            while not self._stop.is_set():
                segment = self._segments.unclaimed()
                if segment is None:
                    segment = self._segments.split()
                    if segment is not None:
                        # A split may make more segments than this one: idle workers look again.
                        self._cond.notify_all()
                if segment is not None:
                    return segment
                if all(s.fetched for s in self._segments.items):
                    return None
                self._cond.wait(_WAIT)
        return None

    def _work(self) -> None:
        try:
            while True:
                segment = self._claim()
                if segment is None:
                    return
                step = self._fetch(segment)
                while self._put(Item(segment, step)) and not step.done:
                    with self._cond:
                        self._cond.notify_all()
                    step = self._fetch(segment)
                with self._cond:
                    segment.owned = False
                    segment.fetched = step.done
                    self._cond.notify_all()
                if not step.done:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)
        finally:
            with self._cond:
                self._running -= 1
                last = self._running == 0
                self._cond.notify_all()
            if last:
                self._put(None)

    def _fetch(self, segment: Segment) -> Step:
        step = segment.walk.step()
        if step.done:
            reached = reach(step, segment.end())
            with self._cond:
                segment.reached = reached
        return step

    def _put(self, item: Item | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_WAIT)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[list[Item]]:
        """Items in groups: one awaited, then those already waiting (at most ``GROUP`` in all).

        The consumer applies a group in one commit: one fsync for many pages when the segments
        run ahead of it.
        """
        ended: BaseException | None = None
        finished = False
        while not finished and ended is None:
            group: list[Item] = []
            item = self._queue.get()
            while True:
                if item is None:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    ended = item
                    break
                group.append(item)
                if len(group) >= GROUP:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if group:
                yield group
        if ended is not None:
            raise ended

    def applied(self, item: Item) -> None:
        """The consumer has made ``item`` durable."""
        with self._cond:
            segment = item.segment
            if item.step.resume is not None and (
                segment.applied is None or item.step.resume > segment.applied
            ):
                segment.applied = item.step.resume
            if item.step.done:
                segment.finished = True

    def checkpoint(self) -> str | None:
        """The cursor to save (:meth:`fetcher.ctx.segments.Segments.checkpoint`); None for the
        page-number style, which has no position."""
        if self.paged:
            return None
        with self._cond:
            return self._segments.checkpoint()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # Threads inside a request end with it (every request has a timeout) and then see the stop.
