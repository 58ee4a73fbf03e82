"""What the CTX API answers, checked: pages of objects, subscriptions, single objects.

Shapes from ``cyberthreatexchange/server/arango_helpers.py`` (``get_objects``: cursor pages) and
the older ``get_paginated_response`` (page-number pages); ``v1/subscriptions/`` as the official
OpenCTI connector reads it (``external-import/dogesec-cyberthreatexchange``). Kept apart from the
HTTP client (:mod:`fetcher.ctx.client`): the mirror checks the records it keeps with
:func:`check_object` and knows nothing of HTTP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from fetcher.errors import MalformedResponseError
from fetcher.stix import JSONDict
from shared.errors import UnsafeNameError
from shared.layout import check_feed_id, check_stix_id

logger = logging.getLogger(__name__)

Style = Literal["cursor", "page"]


@dataclass(frozen=True)
class Page:
    """One page of ``objects``, in whichever pagination style the server answered."""

    objects: list[JSONDict]
    style: Style
    next: str | None = None
    page_number: int | None = None
    total: int | None = None

    def ends_numbered(self, read: int) -> bool:
        """Page style: True when this page is empty, or the ``read`` records so far (this page's
        included) reach ``total_results_count``.

        Never from the envelope's ``page_size``: the server reports its default page size
        there, not the one it used (``arango_helpers.py`` ``execute_query`` passes the class
        attribute), so a server whose pages are smaller would end every walk early.
        """
        if not self.objects:
            return True
        return self.total is not None and read >= self.total


@dataclass(frozen=True)
class Subscription:
    """A feed the team is subscribed to, and the subscription's status."""

    feed_id: str
    name: str
    status: str

    @property
    def active(self) -> bool:
        return self.status.lower() == "active"


def int_or_none(value: object) -> int | None:
    """An integer from an answer; None for anything else (a bool is not a count)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_subscription(item: object, path: str) -> Subscription | None:
    """One entry of ``v1/subscriptions/``; None for an entry whose feed id can never be fetched."""
    if not isinstance(item, dict):
        raise MalformedResponseError("a subscription is not an object", path=path)
    feed = item.get("feed")
    sub = item.get("subscription")
    if not isinstance(feed, dict) or not isinstance(sub, dict):
        raise MalformedResponseError("a subscription lacks feed or subscription", path=path)
    try:
        feed_id = check_feed_id(feed.get("id"))
    except UnsafeNameError as exc:
        # One bad entry must not hide the team's other feeds; it can never be fetched anyway.
        logger.warning("ignoring a subscription with an unusable feed id: %s", exc)
        return None
    return Subscription(feed_id, str(feed.get("name", "")), str(sub.get("status", "")))


def parse_page(body: JSONDict, *, path: str, feed_id: str | None = None) -> Page:
    """Check an ``objects`` answer and tell its pagination style from its keys.

    Cursor style: ``{objects, next, count}`` (arango_helpers.py ``get_objects``); page-number
    style: ``{page_size, page_number, page_results_count, total_results_count, objects}`` (the
    older ``get_paginated_response``). Objects are checked one by one where they are kept
    (:meth:`fetcher.state.mirror.Mirror.apply_pages`), so one bad record cannot stop a feed.
    """
    objects = body.get("objects")
    if objects is None and ("next" in body or "page_number" in body):
        # Some servers drop the key of an empty list.
        objects = []
    if not isinstance(objects, list):
        raise MalformedResponseError("answer has no objects list", path=path, feed_id=feed_id)
    if not all(isinstance(obj, dict) for obj in objects):
        raise MalformedResponseError("an object is not a JSON object", path=path, feed_id=feed_id)
    if "next" in body:
        nxt = body["next"]
        if nxt is not None and not isinstance(nxt, str):
            raise MalformedResponseError("next is not a string", path=path, feed_id=feed_id)
        return Page(objects=objects, style="cursor", next=nxt or None)
    if "page_number" in body or "total_results_count" in body:
        return Page(
            objects=objects,
            style="page",
            page_number=int_or_none(body.get("page_number")),
            total=int_or_none(body.get("total_results_count")),
        )
    raise MalformedResponseError(
        "answer is neither cursor- nor page-style", path=path, feed_id=feed_id
    )


def check_object(obj: object, *, path: str, feed_id: str | None = None) -> JSONDict:
    """An object from an answer: a JSON object whose ``id`` is ``<type>--<uuid>`` of its ``type``."""
    if not isinstance(obj, dict):
        raise MalformedResponseError("an object is not a JSON object", path=path, feed_id=feed_id)
    try:
        object_id = check_stix_id(obj.get("id"))
    except UnsafeNameError as exc:
        raise MalformedResponseError(str(exc), path=path, feed_id=feed_id) from None
    if obj.get("type") != object_id.split("--", 1)[0]:
        raise MalformedResponseError(
            f"object {object_id} has type {str(obj.get('type'))[:60]!r}", path=path, feed_id=feed_id
        )
    return obj
