"""Walking ``v1/feeds/{feed}/objects/`` in either pagination style without losing an object.

The cursor is server data only (REFERENCE §1): ``_record_modified`` of the objects (cursor style) or the
newest ``_record_modified``/``modified`` seen (page style) — never our own clock, which is what loses
data in the official connector.

Cursor style compares ``_record_modified > added_after`` strictly, so objects that share the last
timestamp of a page with objects on the next page would be skipped by ``next``. We therefore re-ask
from the last *fully seen* timestamp (the greatest one strictly below the page's last) and drop the
objects already yielded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from fetcher.client import OBJECTS_PAGE_SIZE, CTXClient, JSONDict, Page
from fetcher.errors import MalformedResponseError
from shared.layout import parse_stix_timestamp

logger = logging.getLogger(__name__)

MAX_PAGES = 1_000_000


@dataclass(frozen=True)
class Batch:
    """New objects of one page, and the cursor that is safe once they (and all before) are handled.

    ``safe_cursor`` is None when no cursor can be saved yet (page style before the last page).
    ``final`` marks the last batch of the walk.
    """

    objects: list[JSONDict]
    safe_cursor: str | None
    final: bool = False


@dataclass
class Bound:
    """The moving upper end of one segment of a cursor-style walk (:mod:`fetcher.segments`).

    A walk covers ``_record_modified`` in ``(its start, until]``; ``until`` is None while the
    segment is the last one, open-ended. :meth:`cut_at` sets it once, only at or above what the
    walk has already yielded, so no object is ever yielded by two segments.
    """

    #: Newest ``_record_modified`` yielded so far.
    position: datetime | None = None
    until: tuple[datetime, str] | None = None
    #: The walk ended (its final batch was made): it can no longer be cut.
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cut_at(self, when: datetime, raw: str) -> bool:
        """Make ``raw`` the end of this segment if nothing beyond it was yielded yet."""
        with self.lock:
            if self.ended or self.until is not None:
                return False
            if self.position is not None and when < self.position:
                return False
            self.until = (when, raw)
            return True


def record_time(obj: JSONDict, *, path: str, feed_id: str) -> tuple[datetime, str]:
    """The parsed and raw ``_record_modified`` of ``obj`` (what the server's cursor compares)."""
    raw = obj.get("_record_modified")
    if not isinstance(raw, str):
        raise MalformedResponseError(
            f"object {obj.get('id')} has no _record_modified", path=path, feed_id=feed_id
        )
    try:
        return parse_stix_timestamp(raw), raw
    except ValueError:
        raise MalformedResponseError(
            f"object {obj.get('id')} has a bad _record_modified", path=path, feed_id=feed_id
        ) from None


def _updated_time(obj: JSONDict) -> tuple[datetime, str] | None:
    for key in ("_record_modified", "modified"):
        raw = obj.get(key)
        if isinstance(raw, str):
            try:
                return parse_stix_timestamp(raw), raw
            except ValueError:
                continue
    return None


def walk_objects(
    client: CTXClient,
    feed_id: str,
    cursor: str | None,
    types: str | None = None,
    *,
    bound: Bound | None = None,
    on_style: Callable[[str], None] | None = None,
) -> Iterator[Batch]:
    """Yield every object of ``feed_id`` updated after ``cursor``, page by page, then a final batch.

    With a ``bound`` (cursor style only) the walk stops at ``bound.until`` once that is set, and
    its last batch carries that as the safe cursor (not ``final``). ``on_style`` is told the
    pagination style as soon as the first answer shows it.
    """
    path = f"v1/feeds/{feed_id}/objects/"
    params: dict[str, str | int] = {
        "limit": OBJECTS_PAGE_SIZE,
        "page": 1,
        "page_size": OBJECTS_PAGE_SIZE,
    }
    if types:
        params["types"] = types
    if cursor:
        # Both styles' filters on the first request: the answer's shape tells which one the server
        # speaks today (REFERENCE §1: it has switched between them).
        params["added_after"] = cursor
        params["updated_since"] = cursor
    page = client.objects_page(feed_id, params)
    if on_style is not None:
        on_style(page.style)
    if page.style == "page":
        yield from _walk_numbered(client, feed_id, page, params, cursor)
    else:
        yield from _walk_cursor(client, feed_id, page, types, cursor, path, bound)


def walk_segment(
    client: CTXClient, feed_id: str, after: str, types: str | None, bound: Bound
) -> Iterator[Batch]:
    """A cursor-style walk of ``(after, bound.until]`` (the rest of the listing while open)."""
    path = f"v1/feeds/{feed_id}/objects/"
    page = _cursor_page(client, feed_id, after, types, path)
    yield from _walk_cursor(client, feed_id, page, types, after, path, bound)


def _cursor_page(
    client: CTXClient, feed_id: str, cursor: str, types: str | None, path: str
) -> Page:
    """The page after ``cursor`` in the cursor style (any other answer: the style changed)."""
    params: dict[str, str | int] = {"added_after": cursor, "limit": OBJECTS_PAGE_SIZE}
    if types:
        params["types"] = types
    return _still_cursor(client.objects_page(feed_id, params), path)


def _still_cursor(page: Page, path: str) -> Page:
    """``page``, if it is in the cursor style the walk started in."""
    if page.style != "cursor":
        raise MalformedResponseError("pagination style changed mid-walk", path=path)
    return page


def batch_of(item: object) -> Batch:
    """An item a read-ahead thread queued: its batch, or the walk's error, raised here."""
    if isinstance(item, BaseException):
        raise item
    assert isinstance(item, Batch)
    return item


def _walk_numbered(
    client: CTXClient,
    feed_id: str,
    page: Page,
    first_params: dict[str, str | int],
    cursor: str | None,
) -> Iterator[Batch]:
    newest: tuple[datetime, str] | None = None
    params = {k: v for k, v in first_params.items() if k not in ("limit", "added_after")}
    for _ in range(MAX_PAGES):
        for obj in page.objects:
            stamp = _updated_time(obj)
            if stamp is not None and (newest is None or stamp[0] > newest[0]):
                newest = stamp
        if page.is_last_numbered:
            # Page order is not documented in this style, so the cursor moves only at the end.
            yield Batch(page.objects, None)
            final = newest[1] if newest is not None else cursor
            yield Batch([], final, final=True)
            return
        yield Batch(page.objects, None)
        params["page"] = (page.page_number or int(params["page"])) + 1
        page = client.objects_page(feed_id, params)
        if page.style != "page":
            raise MalformedResponseError(
                "pagination style changed mid-walk", path=f"v1/feeds/{feed_id}/objects/"
            )
    raise MalformedResponseError("too many pages", path=f"v1/feeds/{feed_id}/objects/")


def _end(bound: Bound | None, cursor: str | None) -> Batch:
    """The last batch of a walk: ``final`` when open-ended, else the segment's end as cursor."""
    if bound is None:
        return Batch([], cursor, final=True)
    with bound.lock:
        bound.ended = True
        if bound.until is None:
            return Batch([], cursor, final=True)
        return Batch([], bound.until[1])


def _walk_cursor(
    client: CTXClient,
    feed_id: str,
    page: Page,
    types: str | None,
    cursor: str | None,
    path: str,
    bound: Bound | None = None,
) -> Iterator[Batch]:
    seen: dict[str, datetime] = {}
    for _ in range(MAX_PAGES):
        if not page.objects:
            yield _end(bound, cursor)
            return
        stamps = [record_time(obj, path=path, feed_id=feed_id) for obj in page.objects]
        if bound is not None:
            with bound.lock:
                # Read the end and record progress in one step: cut_at() either happened
                # before (this page is trimmed) or sees the position and cuts above it.
                until = bound.until
                beyond = until is not None and any(when > until[0] for when, _ in stamps)
                kept = [
                    (obj, stamp)
                    for obj, stamp in zip(page.objects, stamps, strict=True)
                    if until is None or stamp[0] <= until[0]
                ]
                if kept:
                    newest = max(when for _, (when, _) in kept)
                    if bound.position is None or newest > bound.position:
                        bound.position = newest
                if beyond:
                    bound.ended = True
            if beyond:
                # Sorted ascending: objects past the end are on this page, so everything up to
                # the end after ``cursor`` is here too. The segment is complete.
                assert until is not None
                yield Batch(
                    [o for o, (_, raw) in kept if seen.get(f"{o['id']}|{raw}") is None],
                    until[1],
                )
                return
        fresh = [
            obj
            for obj, (when, raw) in zip(page.objects, stamps, strict=True)
            if seen.get(f"{obj['id']}|{raw}") is None
        ]
        last = max(stamps, key=lambda s: s[0])
        below = [s for s in stamps if s[0] < last[0]]
        follow_url: str | None = None
        if len(page.objects) < OBJECTS_PAGE_SIZE:
            # A short page holds everything after the cursor: nothing at ``last`` is left behind.
            next_cursor = last[1]
        elif below:
            next_cursor = max(below, key=lambda s: s[0])[1]
        else:
            # A full page sharing one timestamp: re-asking cannot make progress. Take the server's
            # ``next``; objects with that same timestamp beyond this page may be missed.
            logger.warning(
                "a whole page shares one _record_modified; following the server's next, "
                "objects with that timestamp beyond this page may be skipped",
                extra={"feed_id": feed_id, "record_modified": last[1]},
            )
            if page.next and page.next.startswith(("http://", "https://")):
                follow_url = page.next
                next_cursor = last[1]
            else:
                next_cursor = page.next or last[1]
        if cursor is not None and next_cursor == cursor and not fresh:
            yield _end(bound, cursor)
            return
        floor = parse_stix_timestamp(next_cursor)
        for obj, (when, raw) in zip(page.objects, stamps, strict=True):
            seen[f"{obj['id']}|{raw}"] = when
        seen = {key: when for key, when in seen.items() if when > floor}
        yield Batch(fresh, next_cursor)
        cursor = next_cursor
        if follow_url is not None:
            page = _still_cursor(client.objects_page(feed_id, url=follow_url), path)
        else:
            page = _cursor_page(client, feed_id, cursor, types, path)
    raise MalformedResponseError("too many pages", path=path)
