"""The objects listing read as several segments of time at once, and the cursor that is safe.

A cursor-style walk is a chain of round trips, each asked with the last one's position. But
``added_after=T`` starts a walk anywhere, so walks started at ``T1 < T2 < …`` cover ``(cursor,
T1]``, ``(T1, T2]``, … between them. Nothing in an answer says how records spread over time: a
worker with nothing to do takes the running segment expected to need the most pages (from its
pace so far) and cuts it in the middle (:meth:`fetcher.ctx.walk.CursorWalk.cut`). A span holding
no record costs one empty answer. Records come back in any order and some twice; the mirror is
indifferent to both (:mod:`fetcher.state.mirror`).

The cursor saved is the position of the first segment not yet wholly applied
(:meth:`Segments.checkpoint`): every record at or before it is in the mirror, whatever the
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

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fetcher.ctx.client import CTXClient
from fetcher.ctx.listing import Walk
from fetcher.ctx.record_time import parse_record_time
from fetcher.ctx.walk import CursorWalk, PageLimit, Step
from shared.timestamps import format_stix_time

#: A span of time narrower than this is not cut again (a cut costs at least one request).
MIN_SPAN = timedelta(milliseconds=1)
#: A segment is halved only when it is expected to need at least this many more pages.
MIN_PAGES_TO_SPLIT = 4
#: How far past this machine's clock the open end of the listing is taken to reach.
CLOCK_MARGIN = timedelta(minutes=5)


@dataclass(eq=False)
class Segment:
    """One segment: its walk, where it started, and how far its steps were applied."""

    walk: Walk
    start: str | None
    applied: str | None = None
    owned: bool = False
    fetched: bool = False
    finished: bool = False
    #: Once finished: how far its span is known whole (:func:`reach`).
    reached: str | None = None

    def end(self) -> str | None:
        """Its end; fixed once its walk is done (:meth:`fetcher.ctx.walk.CursorWalk.cut` refuses)."""
        return self.walk.end() if isinstance(self.walk, CursorWalk) else None

    def __post_init__(self) -> None:
        self.applied = self.start


class Segments:
    """The segments of one listing, in time order, and where to cut them next.

    Not thread-safe: :class:`fetcher.ctx.reader.ListingReader` calls it under its lock.
    """

    def __init__(
        self,
        client: CTXClient,
        feed_id: str,
        first: Segment,
        *,
        workers: int,
        limit: PageLimit,
        hold: str | None,
    ) -> None:
        self._client = client
        self._feed_id = feed_id
        self._workers = workers
        self._limit = limit
        self._hold = hold
        self.items = [first]

    def unclaimed(self) -> Segment | None:
        """The first segment no worker reads and none has read to its end, now owned."""
        for segment in self.items:
            if not segment.owned and not segment.fetched:
                segment.owned = True
                return segment
        return None

    def split(self) -> Segment | None:
        """Halve the running segment with the most pages left, if it has enough.

        Pages left are estimated from the pace of the segment so far (pages per span of time):
        an estimate needs two steps, and a segment expected to need fewer than
        :data:`MIN_PAGES_TO_SPLIT` pages is left alone, so a small feed or a sparse stretch of
        time costs no request for splitting.
        """
        if self._workers == 1 or not self._limit.confirmed or self._holding():
            return None
        horizon = datetime.now(UTC) + CLOCK_MARGIN
        best: tuple[float, int, datetime] | None = None
        for index, segment in enumerate(self.items):
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
        old = self.items[index].walk
        assert isinstance(old, CursorWalk)
        at = format_stix_time(middle)
        end_raw = old.end()
        if not old.cut(at):
            return None
        segment = Segment(
            CursorWalk(self._client, self._feed_id, at, end_raw, limit=self._limit), at, owned=True
        )
        self.items.insert(index + 1, segment)
        return segment

    def _holding(self) -> bool:
        """Whether the first walk has yet to read past ``hold``."""
        if self._hold is None:
            return False
        first = self.items[0]
        position = first.walk.position() if isinstance(first.walk, CursorWalk) else None
        if first.fetched or position is None or position <= self._hold:
            return True
        self._hold = None
        return False

    def checkpoint(self) -> str | None:
        """The cursor to save: every record at or before it has been applied. None: none yet.

        Segments in order: the first that is not finished gives what it applied; a finished one
        that did not reach its end (:func:`reach`) gives its reach; one that did hands on to the
        next. Never a page's ``next``: past a half that was cut it lies beyond records no step
        has served yet.
        """
        position: str | None = None
        for segment in self.items:
            if not segment.finished:
                position = segment.applied
                break
            position, end = segment.reached, segment.end()
            if end is None or position is None or position < end:
                break
        return position


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
