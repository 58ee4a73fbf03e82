"""The objects listing of a feed, walked in whichever pagination style the server answers.

The cursor style is walked by :class:`fetcher.ctx.walk.CursorWalk`; the older page-number style
(``page``/``page_size``, ``{page_number, total_results_count, objects}``) is read whole, page
after page (:class:`NumberedWalk`).
"""

from __future__ import annotations

from fetcher.ctx.answers import Page
from fetcher.ctx.client import OBJECTS_PAGE_SIZE, CTXClient
from fetcher.ctx.walk import CursorWalk, PageLimit, Step
from fetcher.errors import MalformedResponseError


class NumberedWalk:
    """The older page-number style: every page of the listing, in order, on every pass.

    That style's pages are offsets into a sorted result; nothing in an answer says how far it
    reaches in time, so no position can be saved and each pass reads the feed whole (the mirror
    keeps what did not change from being written again).
    """

    def __init__(self, client: CTXClient, feed_id: str, first: Page) -> None:
        self._client = client
        self._feed_id = feed_id
        self._page: Page | None = first
        self._number = first.page_number or 1
        self._read = 0

    def step(self) -> Step:
        page = self._page
        if page is None:
            page = self._client.objects_page(
                self._feed_id, {"page": self._number, "page_size": OBJECTS_PAGE_SIZE}
            )
            if page.style != "page":
                raise MalformedResponseError(
                    "pagination style changed mid-walk",
                    path=f"v1/feeds/{self._feed_id}/objects/",
                    feed_id=self._feed_id,
                )
        self._page = None
        number = page.page_number or self._number
        self._number = number + 1
        self._read += len(page.objects)
        return Step(
            page.objects, None, None, done=page.ends_numbered(self._read), served=f"#{number:09d}"
        )


Walk = CursorWalk | NumberedWalk


def open_walk(client: CTXClient, feed_id: str, cursor: str | None, limit: PageLimit) -> Walk:
    """The walk from ``cursor``, in whichever pagination style the server answers."""
    params: dict[str, str | int] = {
        "limit": OBJECTS_PAGE_SIZE,
        "page": 1,
        "page_size": OBJECTS_PAGE_SIZE,
        "show_embedded_refs": "false",
    }
    if cursor is not None:
        params["added_after"] = cursor
    first = client.objects_page(feed_id, params)
    if first.style == "page":
        return NumberedWalk(client, feed_id, first)
    return CursorWalk(client, feed_id, cursor, limit=limit, first=first)
