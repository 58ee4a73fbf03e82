"""The CTX HTTP client: one session, timeouts, retries, typed errors, checked answers.

The client knows URLs, pages and answer shapes (``cyberthreatexchange/server/arango_helpers.py``
``get_objects`` for the listing; the hosted layer's ``v1/`` prefix, ``API-KEY`` header and
``v1/subscriptions/`` as the official OpenCTI connector uses them, ``external-import/
dogesec-cyberthreatexchange``); what to ask and when to save a cursor is :mod:`fetcher.walk` and
:mod:`fetcher.sync`'s job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import ConnectionPool
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from fetcher.errors import (
    CTXAuthError,
    CTXConnectionError,
    CTXError,
    CTXHTTPError,
    CTXNotFoundError,
    ForeignHostError,
    MalformedResponseError,
)
from fetcher.metrics import FetcherMetrics
from fetcher.settings import FetcherSettings
from shared.errors import UnsafeNameError
from shared.layout import check_feed_id, check_stix_id

logger = logging.getLogger(__name__)

# The server clamps ``limit`` to 1..MAXIMUM_PAGE_SIZE silently (arango_helpers.py get_limit;
# settings.py: 50), so asking more would only mislead us.
OBJECTS_PAGE_SIZE = 50
SUBSCRIPTIONS_PAGE_SIZE = 50
# A safety net against a server that keeps handing out pages: far beyond any real feed.
MAX_PAGES = 100_000

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 120.0

JSONDict = dict[str, Any]
Style = Literal["cursor", "page"]


@dataclass(frozen=True)
class Page:
    """One page of ``objects``, in whichever pagination style the server answered."""

    objects: list[JSONDict]
    style: Style
    next: str | None = None
    page_number: int | None = None
    page_size: int | None = None
    total: int | None = None

    @property
    def is_last_numbered(self) -> bool:
        """Page style: True when this page is empty or reaches ``total_results_count``."""
        if not self.objects:
            return True
        if self.total is None or self.page_number is None or self.page_size is None:
            return False
        return self.page_number * self.page_size >= self.total


@dataclass(frozen=True)
class Subscription:
    """A feed the team is subscribed to, and the subscription's status."""

    feed_id: str
    name: str
    status: str

    @property
    def active(self) -> bool:
        return self.status.lower() == "active"


class RateLimiter:
    """A token bucket shared by every thread of one client: at most ``rate`` requests a second.

    The bucket holds one token: requests are spaced at least ``1/rate`` apart, so no window of a
    second ever sees more than ``rate`` of them. A bucket of ``rate`` tokens allowed a burst on top
    of the steady rate (measured by ``make bench``: 140/s in one second with a limit of 100).
    Requests are spaced 2% wider than that: the server counts arrivals, and a request sent on time
    after a late one arrives early compared to it; with requests always waiting (listings read in
    parallel), exact spacing let the server see 101 in one second with a limit of 100.
    """

    #: Spacing margin over ``1/rate`` (see the class docstring).
    MARGIN = 1.02

    def __init__(self, rate: float) -> None:
        self._rate = rate / self.MARGIN if rate > 0 else rate
        self._capacity = 1.0
        self._tokens = self._capacity
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if self._rate <= 0:
            return
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self._rate
            time.sleep(wait)


class _CappedRetry(Retry):
    """urllib3's Retry with ``Retry-After`` capped, so a wild header cannot stall a pass for days,
    and each retry it grants counted in the fetcher's metrics."""

    metrics: FetcherMetrics | None = None

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER)

    def new(self, **kw: Any) -> Self:
        # urllib3 builds a new Retry for every attempt from the constructor's arguments only.
        retry = super().new(**kw)
        retry.metrics = self.metrics
        return retry

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        # Raises MaxRetryError when no retry is left: only granted retries get counted.
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.metrics is not None:
            self.metrics.retried(response.status if response is not None else None)
        return retry


def _retry(settings: FetcherSettings, metrics: FetcherMetrics) -> Retry:
    retry = _CappedRetry(
        total=settings.max_retries,
        backoff_factor=settings.backoff_factor,
        backoff_max=120,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        respect_retry_after_header=True,
        # The last answer comes back to us so that its status maps to a typed error.
        raise_on_status=False,
    )
    retry.metrics = metrics
    return retry


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class _KeySession(requests.Session):
    """A session that drops the ``API-KEY`` header when a redirect leaves the base URL's origin.

    requests strips only ``Authorization`` on such redirects; a custom key header would follow.
    """

    def __init__(self, origin: tuple[str, str]) -> None:
        super().__init__()
        self._ctx_origin = origin

    def rebuild_auth(
        self, prepared_request: requests.PreparedRequest, response: requests.Response
    ) -> None:
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]
        if _origin(prepared_request.url or "") != self._ctx_origin:
            prepared_request.headers.pop("API-KEY", None)


class CTXClient:
    """A client of the CTX API for one API key. Thread-safe for concurrent GETs."""

    def __init__(self, settings: FetcherSettings, metrics: FetcherMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else FetcherMetrics()
        self._base = settings.base_url
        self._origin = _origin(self._base)
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        self._limiter = RateLimiter(settings.max_requests_per_second)
        self._session = _KeySession(self._origin)
        # trust_env stays on: HTTPS_PROXY / NO_PROXY / REQUESTS_CA_BUNDLE work as users expect.
        self._session.verify = settings.tls_verify
        self._session.headers["API-KEY"] = settings.api_key.get_secret_value()
        self._session.headers["Accept"] = "application/json"
        adapter = HTTPAdapter(
            max_retries=_retry(settings, self.metrics),
            # Up to CONCURRENCY segments of the listing are read at once: a smaller pool drops
            # connections and opens new ones, and a burst of connects can wait on the server's
            # accept backlog.
            pool_maxsize=max(10, 2 * settings.concurrency + 2),
        )
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> CTXClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, path: str, feed_id: str | None) -> str:
        url = urljoin(self._base, path)
        if _origin(url) != self._origin:
            # The API-KEY header goes with every request of this session: never to another host
            # (a path such as ``//host/…`` would leave it).
            raise ForeignHostError(
                f"refusing a request to another host ({urlsplit(url).netloc})",
                path=urlsplit(url).path,
                feed_id=feed_id,
            )
        return url

    def get_json(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        feed_id: str | None = None,
    ) -> JSONDict:
        """GET a path under the base URL and return its JSON object."""
        url = self._url(path, feed_id)
        path = urlsplit(url).path
        # Path and query only: the key travels in a header, and headers are never logged.
        logger.debug("GET %s", path, extra={"params": dict(params or {})})
        self._limiter.acquire()
        try:
            response = self._session.get(url, params=params, timeout=self._timeout)
        except requests.RequestException as exc:
            self.metrics.answered(None)
            # The exception text may carry the URL and query, never the headers; keep only the
            # class name so no server-controlled text reaches our messages.
            raise CTXConnectionError(
                f"no answer from CTX for {path}: {type(exc).__name__}", path=path, feed_id=feed_id
            ) from None
        with response:
            status = response.status_code
            self.metrics.answered(status)
            if status in (401, 403):
                raise CTXAuthError(
                    f"CTX refused {path} with {status}: the API key is wrong or not entitled",
                    path=path,
                    status_code=status,
                    feed_id=feed_id,
                )
            if status == 404:
                raise CTXNotFoundError(
                    f"CTX has no {path} (404)", path=path, status_code=status, feed_id=feed_id
                )
            if not 200 <= status < 300:
                raise CTXHTTPError(
                    f"CTX answered {status} for {path}",
                    path=path,
                    status_code=status,
                    feed_id=feed_id,
                )
            try:
                body = response.json()
            except (ValueError, requests.RequestException):
                raise MalformedResponseError(
                    f"CTX answer for {path} is not valid JSON", path=path, feed_id=feed_id
                ) from None
        if not isinstance(body, dict):
            raise MalformedResponseError(
                f"CTX answer for {path} is not a JSON object", path=path, feed_id=feed_id
            )
        return body

    def subscriptions(self) -> list[Subscription]:
        """Every subscription of the team (``v1/subscriptions/``, every page)."""
        path = "v1/subscriptions/"
        out: list[Subscription] = []
        for number in range(1, MAX_PAGES):
            body = self.get_json(path, {"page": number, "page_size": SUBSCRIPTIONS_PAGE_SIZE})
            results = body.get("results")
            if not isinstance(results, list):
                raise MalformedResponseError("subscriptions answer has no results list", path=path)
            for item in results:
                sub = _subscription(item, path)
                if sub is not None:
                    out.append(sub)
            page = Page(
                objects=results,
                style="page",
                page_number=_int_or_none(body.get("page_number")),
                page_size=_int_or_none(body.get("page_size")),
                total=_int_or_none(body.get("total_results_count")),
            )
            if page.is_last_numbered:
                break
        return out

    def objects_page(self, feed_id: str, params: Mapping[str, str | int] | None = None) -> Page:
        """One page of ``v1/feeds/{feed}/objects/``."""
        feed_id = check_feed_id(feed_id)
        path = f"v1/feeds/{feed_id}/objects/"
        body = self.get_json(path, params, feed_id=feed_id)
        return parse_page(body, path=path, feed_id=feed_id)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _subscription(item: object, path: str) -> Subscription | None:
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
    (:meth:`fetcher.mirror.Mirror.apply`), so one bad record cannot stop a feed.
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
            page_number=_int_or_none(body.get("page_number")),
            page_size=_int_or_none(body.get("page_size")),
            total=_int_or_none(body.get("total_results_count")),
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


__all__ = [
    "OBJECTS_PAGE_SIZE",
    "CTXClient",
    "CTXError",
    "Page",
    "RateLimiter",
    "Subscription",
    "check_object",
    "parse_page",
]
