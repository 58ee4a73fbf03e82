"""The objects listing walked as several segments of time at once (cursor style; issue 6).

A cursor-style listing is a chain: each page is asked with the last one's cursor, so one walk is
one round trip after the other (79 of them for the 200-report benchmark feed, the whole pass's
critical path). But ``added_after=T`` can start a walk anywhere: walks started at ``T1 < T2 < …``
cover ``(cursor, T1]``, ``(T1, T2]``, … and ``(Tn, ∞)`` between them, each stopping where the next
begins (:class:`fetcher.listing.Bound`), so no object is skipped or yielded twice whatever the
points are. Good points split the objects evenly; CTX adds a report and the objects it refers to
together, so the ``_record_modified`` cursors of the *reports* listing, which is read ahead
anyway, are where the objects listing is cut: each page of reports starts one more segment.

Segments are handed to the consumer strictly in time order, so batches, safe cursors and the
ledger see exactly what one walk would have given. At most ``workers`` segments are fetched at
once; pages read ahead wait in memory, bounded: the segment being consumed holds at most
``depth`` pages and all the others together ``budget`` pages (the one being consumed is never
held back by the others, so the bound cannot deadlock). The page-number style has no such
start parameter and stays one walk.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fetcher.client import CTXClient
from fetcher.listing import Batch, Bound, batch_of, walk_objects, walk_segment
from shared.layout import parse_stix_timestamp

logger = logging.getLogger(__name__)

_END = object()
_WAIT = 0.1


@dataclass
class _Segment:
    index: int
    after: str | None
    bound: Bound = field(default_factory=Bound)
    pages: collections.deque[object] = field(default_factory=collections.deque)


class SegmentedWalk:
    """Iterates the objects listing from ``cursor`` like one walk, fetching segments in parallel.

    :meth:`cut_at` (thread-safe) offers a point in time to start another segment at; points must
    come in ascending order (the reports cursor). :meth:`close` stops every thread.
    """

    def __init__(
        self,
        client: CTXClient,
        feed_id: str,
        cursor: str | None,
        *,
        types: str | None,
        workers: int,
        depth: int,
        budget: int,
    ) -> None:
        self._client = client
        self._feed_id = feed_id
        self._types = types
        self._depth = depth
        self._budget = budget
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._segments: list[_Segment] = []
        self._head = 0
        self._held = 0  # pages waiting in segments other than the head
        self._style: str | None = None
        self._points: list[str] = []  # offered before the first answer showed the style
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ctx-objects-listing")
        first = _Segment(0, cursor)
        self._segments.append(first)
        self._pool.submit(self._run, first, self._first_walk(first))

    @property
    def segments(self) -> int:
        """How many segments were started (for logs and tests)."""
        with self._cond:
            return len(self._segments)

    def _first_walk(self, segment: _Segment) -> Iterator[Batch]:
        return walk_objects(
            self._client,
            self._feed_id,
            segment.after,
            types=self._types,
            bound=segment.bound,
            on_style=self._style_known,
        )

    def _style_known(self, style: str) -> None:
        with self._cond:
            self._style = style
            points, self._points = self._points, []
        for raw in points:
            self.cut_at(raw)

    def cut_at(self, raw: str) -> None:
        """Start a segment at ``raw`` (a server ``_record_modified``) if that still splits work."""
        try:
            when = parse_stix_timestamp(raw)
        except ValueError:
            return
        with self._cond:
            if self._stop.is_set():
                return
            if self._style is None:
                self._points.append(raw)
                return
            if self._style != "cursor":
                return
            last = self._segments[-1]
            if last.after is not None and when <= parse_stix_timestamp(last.after):
                return
            if not last.bound.cut_at(when, raw):
                return
            segment = _Segment(len(self._segments), raw)
            self._segments.append(segment)
        walk = walk_segment(self._client, self._feed_id, raw, self._types, segment.bound)
        self._pool.submit(self._run, segment, walk)

    def _run(self, segment: _Segment, walk: Iterator[Batch]) -> None:
        try:
            for batch in walk:
                if not self._put(segment, batch):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(segment, exc)
            return
        self._put(segment, _END)

    def _put(self, segment: _Segment, item: object) -> bool:
        with self._cond:
            while not self._stop.is_set():
                if segment.index == self._head:
                    room = len(segment.pages) < self._depth
                else:
                    room = self._held < self._budget
                if room or item is _END or isinstance(item, BaseException):
                    segment.pages.append(item)
                    if segment.index != self._head:
                        self._held += 1
                    self._cond.notify_all()
                    return True
                self._cond.wait(_WAIT)
        return False

    def __iter__(self) -> Iterator[Batch]:
        while True:
            with self._cond:
                segment = self._segments[self._head]
                while not segment.pages:
                    if self._stop.is_set():
                        return
                    self._cond.wait(_WAIT)
                item = segment.pages.popleft()
                self._cond.notify_all()
            if item is _END:
                with self._cond:
                    if self._head + 1 >= len(self._segments):
                        return
                    self._head += 1
                    # The new head's pages stop counting against the others' budget.
                    self._held -= len(self._segments[self._head].pages)
                    self._cond.notify_all()
                continue
            yield batch_of(item)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        # Threads inside a request end with it (every request has a timeout) and then see the stop.
        self._pool.shutdown(wait=False, cancel_futures=True)
