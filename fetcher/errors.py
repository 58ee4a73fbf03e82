"""Errors raised by :mod:`fetcher`.

Tree::

    FetcherError                 root; ``feed_id`` when the error concerns one feed
    ├── CTXError                 talking to CTX failed (``path``: URL path, never the query or key)
    │   ├── CTXConnectionError   no answer: refused, timed out, dropped (after retries)
    │   ├── CTXHTTPError         a final non-2xx answer (``status_code``)
    │   │   ├── CTXAuthError     401/403: key wrong or not entitled; stops the feed
    │   │   └── CTXNotFoundError 404
    │   ├── MalformedResponseError  not JSON, wrong shape, or an id that may not become a path
    │   └── ForeignHostError     a request URL on another host; never sent (the key would leak)
    ├── FeedNotSubscribedError   a configured feed the team is not subscribed to, or not active
    ├── LedgerError              the cursor / dedup ledger could not be read or written (``path``)
    │   └── StateBusyError       another fetcher holds the state's lock (``path``: the lock file)
    └── TransferError            ``transfer`` cannot list a file: its bytes do not match its name,
                                 or it cannot be read (``path``, relative to SPOOL_DIR)

Spool failures are :class:`shared.errors.SpoolError` and pass through unchanged, among them
:class:`shared.errors.NotASpoolError`: a command pointed at no spool or at no fetcher state.
"""

from __future__ import annotations

from pathlib import Path


class FetcherError(Exception):
    """Root of every error raised by :mod:`fetcher`."""

    def __init__(self, message: str, *, feed_id: str | None = None) -> None:
        self.feed_id = feed_id
        super().__init__(message)


class CTXError(FetcherError):
    """A request to CTX failed; ``path`` is the URL path (no query string, no key)."""

    def __init__(self, message: str, *, path: str, feed_id: str | None = None) -> None:
        self.path = path
        super().__init__(message, feed_id=feed_id)


class CTXConnectionError(CTXError):
    """CTX did not answer (connection refused, timeout, dropped connection) after retries."""


class CTXHTTPError(CTXError):
    """CTX answered with a final non-2xx status ``status_code`` (after retries)."""

    def __init__(
        self, message: str, *, path: str, status_code: int, feed_id: str | None = None
    ) -> None:
        self.status_code = status_code
        super().__init__(message, path=path, feed_id=feed_id)


class CTXAuthError(CTXHTTPError):
    """401/403: the API key is wrong or not entitled to this resource (permanent)."""


class CTXNotFoundError(CTXHTTPError):
    """404: the feed or object does not exist."""


class MalformedResponseError(CTXError):
    """The answer is not JSON, has the wrong shape, or carries an id that is not safe to use."""


class ForeignHostError(CTXError):
    """A request would go to another host than the base URL's: refused so the key stays home."""


class FeedNotSubscribedError(FetcherError):
    """A configured feed is not among the team's subscriptions, or its subscription is not active."""

    def __init__(self, message: str, *, feed_id: str, status: str | None) -> None:
        self.status = status
        super().__init__(message, feed_id=feed_id)


class LedgerError(FetcherError):
    """The fetcher's state database (cursors, dedup ledger) failed; ``path`` is the database."""

    def __init__(self, message: str, *, path: Path, feed_id: str | None = None) -> None:
        self.path = path
        super().__init__(message, feed_id=feed_id)


class TransferError(FetcherError):
    """A file of a transfer set cannot be vouched for; ``path`` is relative to ``SPOOL_DIR``."""

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


class StateBusyError(LedgerError):
    """Another ctx-fetcher process holds the lock of this state directory (``path``)."""
