"""The CTX HTTP client: one session, timeouts, retries, rate limit, typed errors.

The client knows URLs and how to ask (the hosted layer's ``v1/`` prefix, ``API-KEY`` header and
``v1/subscriptions/`` as the official OpenCTI connector uses them, ``external-import/
dogesec-cyberthreatexchange``); the shapes of the answers are checked by :mod:`fetcher.ctx.answers`;
what to ask and when to save a cursor is :mod:`fetcher.ctx.walk` and :mod:`fetcher.passes.run`'s job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import ConnectionPool
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry

from fetcher.ctx.answers import (
    Page,
    Subscription,
    int_or_none,
    parse_page,
    parse_subscription,
)
from fetcher.ctx.metrics import RequestMetrics
from fetcher.errors import (
    CTXAuthError,
    CTXConnectionError,
    CTXHTTPError,
    CTXNotFoundError,
    ForeignHostError,
    MalformedResponseError,
)
from fetcher.settings import FetcherSettings
from fetcher.stix import JSONDict
from shared.layout import check_feed_id

logger = logging.getLogger(__name__)

# The server clamps ``limit`` to 1..MAXIMUM_PAGE_SIZE silently (arango_helpers.py get_limit;
# settings.py: 50), so asking more would only mislead us.
OBJECTS_PAGE_SIZE = 50
SUBSCRIPTIONS_PAGE_SIZE = 50
# A safety net against a server that keeps handing out pages: far beyond any real feed.
MAX_PAGES = 100_000

RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 120.0


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

    metrics: RequestMetrics | None = None

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


def _retry(settings: FetcherSettings, metrics: RequestMetrics) -> Retry:
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

    def __init__(self, settings: FetcherSettings, metrics: RequestMetrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else RequestMetrics()
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
        read = 0
        for number in range(1, MAX_PAGES):
            body = self.get_json(path, {"page": number, "page_size": SUBSCRIPTIONS_PAGE_SIZE})
            results = body.get("results")
            if not isinstance(results, list):
                raise MalformedResponseError("subscriptions answer has no results list", path=path)
            for item in results:
                sub = parse_subscription(item, path)
                if sub is not None:
                    out.append(sub)
            page = Page(
                objects=results,
                style="page",
                page_number=int_or_none(body.get("page_number")),
                total=int_or_none(body.get("total_results_count")),
            )
            read += len(results)
            if page.ends_numbered(read):
                break
        return out

    def objects_page(self, feed_id: str, params: Mapping[str, str | int] | None = None) -> Page:
        """One page of ``v1/feeds/{feed}/objects/``."""
        feed_id = check_feed_id(feed_id)
        path = f"v1/feeds/{feed_id}/objects/"
        body = self.get_json(path, params, feed_id=feed_id)
        return parse_page(body, path=path, feed_id=feed_id)
