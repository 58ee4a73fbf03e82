"""Walking ``v1/feeds/{feed}/objects/`` from one point in time without losing a record.

What the server does (``cyberthreatexchange/server/arango_helpers.py``, ``make_objects_query`` and
``ArangoDBHelper.get_objects``), and what each rule below answers:

* Objects carry no ``_record_modified`` (``KEEP(doc, KEYS(doc, TRUE))`` drops every ``_`` key);
  the only position a client gets is ``next``, the page's greatest ``_record_modified``, and the
  filter is ``_record_modified > added_after``, strictly greater, compared as strings.
* A page is the union of two halves, each ``SORT _record_modified ASC LIMIT limit`` on its own:
  edges (the ``relationship`` objects, stix2arango's edge collection) and vertices (everything
  else). When one half is full and the other half's records run further, ``next`` lies beyond
  records of the full half that this page did not carry: a client that follows ``next`` loses
  them. So the walk never trusts ``next`` alone; for each *full* half it knows the greatest record
  time that half reached (:func:`_half_end`) and resumes from the smallest of those.
* Records that share the ``_record_modified`` where a half was cut are not all on the page. The
  walk resumes from just below that time (:func:`fetcher.ctx.record_time.just_below`) and is served them again, with the
  records already seen; a step may therefore repeat records, and consumers are idempotent.
* The older page-number style is detected from the answer and read whole, page after page
  (:class:`fetcher.ctx.listing.NumberedWalk`).

Every record of every version is listed: the walk yields versions, the mirror keeps the newest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from fetcher.ctx.answers import Page
from fetcher.ctx.client import OBJECTS_PAGE_SIZE, CTXClient
from fetcher.ctx.record_time import just_below
from fetcher.errors import MalformedResponseError
from fetcher.stix import JSONDict

logger = logging.getLogger(__name__)

#: The edge half holds exactly this type (stix2arango ``map_relationships``; sightings are vertices).
EDGE_TYPE = "relationship"


@dataclass(frozen=True)
class Step:
    """One step of a walk: the records served and where the walk stands after them.

    ``resume`` is the ``added_after`` the walk goes on from (None: from the start of the feed);
    every record with a ``_record_modified`` up to and including it has been yielded by this step
    or an earlier one. ``proxy`` is the page's ``next``, an upper bound of these records' times.
    ``served`` places the page among the others (:func:`fetcher.stix.served_position`). A step
    that is ``done`` either passed the walk's end (``cut``) or found the end of the listing.
    """

    objects: list[JSONDict]
    resume: str | None
    proxy: str | None
    done: bool
    served: str = ""
    cut: bool = False


class PageLimit:
    """How many records make a half of a page full, shared by the walks of one listing.

    The open-source server clamps ``limit`` to 50 (``arango_helpers.py`` ``get_limit``), and a
    half of 50 records proves the server serves that many. The hosted layer is not public code:
    until a page proves it, a short page is followed by one more request from its ``next``
    (:meth:`CursorWalk.step`), and a server that answers it with records although the short page
    looked complete serves fewer than asked: from then on a half that holds as many records as
    the short page's largest counts as full.
    """

    #: A half smaller than this never lowers the limit: records that came after a short page
    #: are far likelier to be new than a server page of so few records.
    MIN_CLAMP = 10

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.full_at = OBJECTS_PAGE_SIZE
        self.confirmed = False

    def seen(self, largest: int) -> None:
        if largest >= self.full_at:
            self.confirmed = True

    def lower(self, size: int) -> bool:
        """Take ``size`` as the server's limit; False when it is not a plausible one."""
        with self._lock:
            if self.confirmed or size < self.MIN_CLAMP or size >= self.full_at:
                return False
            self.full_at = size
            self.confirmed = True
            return True


class CursorWalk:
    """One segment of the cursor-style listing: records after ``start`` up to ``end`` (or all).

    ``end`` may be lowered while the walk runs (:meth:`cut`), never raised. Not thread-safe except
    :meth:`cut` / :meth:`position`.
    """

    def __init__(
        self,
        client: CTXClient,
        feed_id: str,
        start: str | None,
        end: str | None = None,
        *,
        limit: PageLimit,
        first: Page | None = None,
    ) -> None:
        self._client = client
        self._feed_id = feed_id
        self._after = start
        self._end = end
        self._first = first
        self._done = False
        self._bound: str | None = None
        self._limit = limit
        #: After a short page: its ``next`` and its largest half (the next step asks from there).
        self._probe: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._steps = 0
        self._first_position: str | None = None

    @property
    def path(self) -> str:
        return f"v1/feeds/{self._feed_id}/objects/"

    def position(self) -> str | None:
        """Where the next step asks from (None before the first answer of an open start)."""
        with self._lock:
            return self._after

    def end(self) -> str | None:
        with self._lock:
            return self._end

    def pace(self) -> tuple[str, str, int] | None:
        """(position after the first step, position now, steps since): how fast it moves."""
        with self._lock:
            if self._done or self._first_position is None or self._after is None:
                return None
            return self._first_position, self._after, self._steps - 1

    def cut(self, at: str) -> bool:
        """Make ``at`` the end of this segment if it is above its position and below its end."""
        with self._lock:
            if self._done or self._after is None or at <= self._after:
                return False
            if self._end is not None and at >= self._end:
                return False
            self._end = at
            return True

    def _ask(self, after: str | None, types: str | None = None) -> Page:
        if self._first is not None and types is None:
            page, self._first = self._first, None
            return page
        params: dict[str, str | int] = {"limit": OBJECTS_PAGE_SIZE, "show_embedded_refs": "false"}
        if after is not None:
            params["added_after"] = after
        if types is not None:
            params["types"] = types
        page = self._client.objects_page(self._feed_id, params)
        if page.style != "cursor":
            raise MalformedResponseError(
                "pagination style changed mid-walk", path=self.path, feed_id=self._feed_id
            )
        return page

    def step(self) -> Step:
        """Ask one page (and, where a half was cut short, that half's end) and move on."""
        after, probe = self._after, self._probe
        self._probe = None
        asked = probe[0] if probe is not None else after
        page = self._ask(asked)
        served = f"{page.next or ''}|{asked or ''}"
        if not page.objects or page.next is None:
            # Nothing after ``asked``: after a short page, that page held the rest.
            return self._finish(page.objects, asked, page.next, served)
        if probe is not None and self._limit.lower(probe[1]):
            # Records right after a page that looked complete: the server's pages are smaller
            # than asked. Read again from before that page, with halves of this size full.
            logger.debug(
                "the objects listing serves %d records a half; reading on with that limit",
                probe[1],
                extra={"feed_id": self._feed_id},
            )
            return Step(page.objects, after, page.next, done=False, served=served)
        edges = sum(1 for obj in page.objects if obj.get("type") == EDGE_TYPE)
        vertices = len(page.objects) - edges
        self._limit.seen(max(edges, vertices))
        full_at = self._limit.full_at
        last_is_edge = page.objects[-1].get("type") == EDGE_TYPE
        bounds: list[tuple[str, int]] = []
        if edges >= full_at:
            bounds.append((page.next if last_is_edge else self._half_end(asked, EDGE_TYPE), edges))
        if vertices >= full_at:
            kinds = sorted({str(o.get("type")) for o in page.objects if o.get("type") != EDGE_TYPE})
            bounds.append(
                (
                    page.next if not last_is_edge else self._half_end(asked, ",".join(kinds)),
                    vertices,
                )
            )
        if not bounds:
            if len(page.objects) >= OBJECTS_PAGE_SIZE:
                # A server that limits the whole page rather than each half (not the open-source
                # one) would have cut it here; the page is sorted, so ``next`` is where it stopped.
                bounds.append((page.next, len(page.objects)))
            elif self._limit.confirmed:
                # Neither half was cut: every record after ``asked`` is on this page.
                return self._finish(page.objects, page.next, page.next, served)
            else:
                # Complete unless the server serves fewer than asked (PageLimit): one more
                # request from ``next`` tells. The walk does not move on before it answers.
                self._probe = (page.next, max(edges, vertices))
                return Step(page.objects, after, page.next, done=False, served=served)
        bound, count = min(bounds)
        resume = just_below(bound)
        if (self._bound is not None and bound <= self._bound) or resume is None:
            # More records share one time than a half holds (or the time is in no known
            # format): nothing just below it can be asked, and the records at that time that
            # did not fit on the page are served by no request.
            logger.warning(
                "%d records of the objects listing share the _record_modified %s, a whole page; "
                "the listing cannot serve more of them, so any beyond these are missed",
                count,
                bound,
                extra={"feed_id": self._feed_id, "record_modified": bound, "records": count},
            )
            resume = bound
        self._bound = bound
        with self._lock:
            self._after = resume
            self._steps += 1
            if self._first_position is None:
                self._first_position = resume
            end = self._end
        if end is not None and resume >= end:
            return self._finish(page.objects, resume, page.next, served, cut=True)
        return Step(page.objects, resume, page.next, done=False, served=served)

    def _half_end(self, after: str | None, types: str) -> str:
        """The greatest record time the listing reaches from ``after`` in one half alone.

        With ``types`` naming the half's own types the other half is empty (edges exist only
        when ``types`` names ``relationship``; no vertex has that type), so ``next`` is exactly
        where that half was cut on the mixed page.
        """
        page = self._ask(after, types)
        if not page.objects or page.next is None:
            raise MalformedResponseError(
                "the objects listing changed while it was read (a half came back empty)",
                path=self.path,
                feed_id=self._feed_id,
            )
        return page.next

    def _finish(
        self,
        objects: list[JSONDict],
        resume: str | None,
        proxy: str | None,
        served: str,
        *,
        cut: bool = False,
    ) -> Step:
        # The end of the listing: the records at the last time were all on the page, but a
        # record stored later in the same microsecond is served again by resuming just below.
        if resume is not None and not cut:
            resume = just_below(resume) or resume
        with self._lock:
            self._done = True
            if resume is not None and (self._after is None or resume > self._after):
                self._after = resume
            resume = self._after
        return Step(objects, resume, proxy, done=True, served=served, cut=cut)
