"""The objects listing read as several segments of time at once, and the cursor that is safe.

A cursor-style walk is a chain of round trips, each asked with the last one's position. But
``added_after=T`` starts a walk anywhere, so walks started at ``T1 < T2 < …`` cover ``(cursor,
T1]``, ``(T1, T2]``, … between them. Nothing in an answer says how records spread over time: once
the first answer gives a position, what lies ahead of it is cut into one segment per worker; after
that a worker with nothing to do takes the running segment expected to need the most pages (from
its pace so far) and cuts it in the middle (:meth:`fetcher.ctx.walk.CursorWalk.cut`). A span holding
no record costs one empty answer. Records come back in any order and some twice; the
mirror is indifferent to both (:mod:`fetcher.state.ledger`).

The cursor saved is the position of the first segment not yet wholly applied
(:meth:`ListingReader.checkpoint`): every record at or before it is in the mirror, whatever the
other segments did. A segment that ended because the listing ended, below its own end, covers its
span only as far as the listing reached when it asked: the last segments reach past the newest
record (up to this machine's clock and a margin), and records the server stores while the pass
runs get times in that span. So such a segment stops the checkpoint at what it read, and only a
segment that read past its end hands the checkpoint on to the next one. Segments are cut only
once a page has proved the server's page size (:class:`fetcher.ctx.walk.PageLimit`): a feed with
little to read costs one or two requests. The page-number style has no start parameter and stays
one walk.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fetcher.ctx.client import CTXClient
from fetcher.ctx.walk import (
    CursorWalk,
    NumberedWalk,
    PageLimit,
    Step,
    Walk,
    open_walk,
    parse_record_time,
)
from shared.timestamps import format_stix_time

logger = logging.getLogger(__name__)

#: A span of time narrower than this is not cut again (a cut costs at least one request).
MIN_SPAN = timedelta(milliseconds=1)
#: A segment is halved only when it is expected to need at least this many more pages.
MIN_PAGES_TO_SPLIT = 4
#: How far past this machine's clock the open end of the listing is taken to reach.
CLOCK_MARGIN = timedelta(minutes=5)
_WAIT = 0.1
#: Pages applied in one commit at most.
GROUP = 16


@dataclass(eq=False)
class Segment:
    """One segment: its walk, where it started, and how far its steps were applied."""

    walk: Walk
    start: str | None
    applied: str | None = None
    owned: bool = False
    fetched: bool = False
    finished: bool = False
    #: Once finished: how far its span is known whole (:meth:`reach`).
    reached: str | None = None

    def end(self) -> str | None:
        """Its end; fixed once its walk is done (:meth:`fetcher.ctx.walk.CursorWalk.cut` refuses)."""
        return self.walk.end() if isinstance(self.walk, CursorWalk) else None

    def __post_init__(self) -> None:
        self.applied = self.start


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
        self._hold = hold
        self._client = client
        self._feed_id = feed_id
        self._limit = PageLimit()
        first = open_walk(client, feed_id, cursor, self._limit)
        self.paged = isinstance(first, NumberedWalk)
        self._segments = [Segment(first, cursor)]
        self._spread = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._queue: queue.Queue[Item | BaseException | None] = queue.Queue(maxsize=buffered)
        self._workers = 1 if self.paged else max(1, workers)
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
            return len(self._segments)

    def _claim(self) -> Segment | None:
        with self._cond:
            while not self._stop.is_set():
                for segment in self._segments:
                    if not segment.owned and not segment.fetched:
                        segment.owned = True
                        return segment
                split = self._split()
                if split is not None:
                    return split
                if all(s.fetched for s in self._segments):
                    return None
                self._cond.wait(_WAIT)
        return None

    def _split(self) -> Segment | None:
        """Under the lock: halve the running segment with the most pages left, if it has enough.

        Pages left are estimated from the pace of the segment so far (pages per span of time):
        an estimate needs two steps, and a segment expected to need fewer than
        :data:`MIN_PAGES_TO_SPLIT` pages is left alone, so a small feed or a sparse stretch of
        time costs no request for splitting.
        """
        if self._workers == 1 or not self._limit.confirmed or self._holding():
            return None
        horizon = datetime.now(UTC) + CLOCK_MARGIN
        if not self._spread:
            spread = self._spread_first(horizon)
            if spread is not None:
                return spread
        best: tuple[float, int, datetime] | None = None
        for index, segment in enumerate(self._segments):
            walk = segment.walk
            if segment.fetched or not isinstance(walk, CursorWalk):
                continue
            pace = walk.pace()
            if pace is None or pace[2] < 1:
                continue
            first, position = parse_record_time(pace[0]), parse_record_time(pace[1])
            end_raw = walk.end()
            end = parse_record_time(end_raw) if end_raw is not None else horizon
            if first is None or position is None or end is None or position <= first:
                continue
            if end - position < 2 * MIN_SPAN:
                continue
            pages_left = (end - position) / (position - first) * pace[2]
            if pages_left >= MIN_PAGES_TO_SPLIT and (best is None or pages_left > best[0]):
                best = (pages_left, index, position + (end - position) / 2)
        if best is None:
            return None
        _, index, middle = best
        old = self._segments[index].walk
        assert isinstance(old, CursorWalk)
        at = format_stix_time(middle)
        end_raw = old.end()
        if not old.cut(at):
            return None
        segment = Segment(
            CursorWalk(self._client, self._feed_id, at, end_raw, limit=self._limit), at, owned=True
        )
        self._segments.insert(index + 1, segment)
        return segment

    def _holding(self) -> bool:
        """Under the lock: whether the first walk has yet to read past ``hold``."""
        if self._hold is None:
            return False
        first = self._segments[0]
        position = first.walk.position() if isinstance(first.walk, CursorWalk) else None
        if first.fetched or position is None or position <= self._hold:
            return True
        self._hold = None
        return False

    def _spread_first(self, horizon: datetime) -> Segment | None:
        """Under the lock: once the first segment has a position, cut what lies ahead of it into
        one segment per worker at once, instead of halving twice per doubling of the workers.

        Nothing says how records spread over time; a piece that holds none costs one empty
        answer, and a piece that holds most of them is halved later by its pace (:meth:`_split`).
        """
        if len(self._segments) != 1:
            self._spread = True
            return None
        old = self._segments[0].walk
        if not isinstance(old, CursorWalk) or self._segments[0].fetched:
            self._spread = True
            return None
        position_raw = old.position()
        if position_raw is None:
            return None  # not yet: the first answer gives the position
        self._spread = True
        position = parse_record_time(position_raw)
        end_raw = old.end()
        end = parse_record_time(end_raw) if end_raw is not None else horizon
        if position is None or end is None or end - position < self._workers * MIN_SPAN:
            return None
        step = (end - position) / self._workers
        cuts = [format_stix_time(position + step * i) for i in range(1, self._workers)]
        if not old.cut(cuts[0]):
            return None
        ends: list[str | None] = [*cuts[1:], end_raw]
        made = [
            Segment(CursorWalk(self._client, self._feed_id, start, stop, limit=self._limit), start)
            for start, stop in zip(cuts, ends, strict=True)
        ]
        self._segments[1:1] = made
        made[0].owned = True
        self._cond.notify_all()
        return made[0]

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
            reached = self.reach(step, segment.end())
            with self._cond:
                segment.reached = reached
        return step

    @staticmethod
    def reach(step: Step, end: str | None) -> str | None:
        """How far the span of a segment that ended with ``step`` is known whole.

        A segment that read past its end covers all of it. One that found the end of the
        listing covers what the listing held then, up to ``step.resume``: records stored later
        may get a time between that and its end (the server stamps records with its clock), so
        it covers no more, whatever other segments have read since.
        """
        if step.cut:
            return end
        if end is None or step.resume is None:
            return step.resume
        return min(step.resume, end)

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
        """The cursor to save: every record at or before it has been applied. None: none yet.

        Segments in order: the first that is not finished gives what it applied; a finished one
        that did not reach its end (:meth:`reach`) gives its reach; one that did hands on to the
        next. Never a page's ``next``: past a half that was cut it lies beyond records no step
        has served yet.
        """
        if self.paged:
            return None
        with self._cond:
            position: str | None = None
            for segment in self._segments:
                if not segment.finished:
                    position = segment.applied
                    break
                position, end = segment.reached, segment.end()
                if end is None or position is None or position < end:
                    break
            return position

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # Threads inside a request end with it (every request has a timeout) and then see the stop.
