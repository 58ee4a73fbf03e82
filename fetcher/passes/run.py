"""One pass: every configured feed in turn (:mod:`fetcher.passes.feed`), each feed's failure its
own; what each did is logged, recorded in the state's pass log and counted in the metrics.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from fetcher.ctx.answers import Subscription
from fetcher.ctx.client import CTXClient
from fetcher.errors import FeedNotSubscribedError, FetcherError
from fetcher.passes.feed import DEFAULT_OVERLAP, DEFAULT_REPORT_GRACE, FeedPass
from fetcher.passes.metrics import PassMetrics
from fetcher.passes.result import FeedResult, Progress
from fetcher.state.ledger import Ledger
from shared.durable import remove_stale_temps
from shared.layout import Spool, check_feed_id
from shared.signing import SigningKey
from shared.timestamps import now_stix_time

logger = logging.getLogger(__name__)

# A temp file this old belongs to a write that died: publishing one file takes milliseconds.
STALE_TEMP_SECONDS = 15 * 60


def run_pass(
    client: CTXClient,
    ledger: Ledger,
    spool: Spool,
    feed_ids: tuple[str, ...],
    *,
    concurrency: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    signing_key: SigningKey | None = None,
    overlap: timedelta = DEFAULT_OVERLAP,
    report_grace: timedelta = DEFAULT_REPORT_GRACE,
    metrics: PassMetrics | None = None,
) -> list[FeedResult]:
    """One pass over every configured feed; each feed's failure stays that feed's.

    When ``stop`` is set the pass ends after the current feed; the feeds left have no result.
    """
    try:
        subscriptions: dict[str, Subscription] | None = {
            sub.feed_id: sub for sub in client.subscriptions()
        }
        failure: FetcherError | None = None
    except FetcherError as exc:
        subscriptions, failure = None, exc
    results = []
    log = ledger.passes
    for feed_id in feed_ids:
        # Temp files of a fetcher killed mid-write: removed before they travel anywhere.
        stale = remove_stale_temps(spool.incoming / check_feed_id(feed_id), STALE_TEMP_SECONDS)
        if stale:
            logger.info("removed stale temp files", extra={"feed_id": feed_id, "count": stale})
        if stop is not None and stop.is_set():
            logger.info("stop requested; feeds left for the next pass", extra={"feed_id": feed_id})
            break
        log.started(feed_id, now_stix_time())
        if subscriptions is None:
            result = FeedResult(feed_id, error=failure)
        else:
            sub = subscriptions.get(feed_id)
            if sub is None or not sub.active:
                status = None if sub is None else sub.status
                message = (
                    "not among the team's subscriptions (see `ctx-fetcher feeds`)"
                    if sub is None
                    else f"the subscription to {sub.name!r} is {status!r}, not active"
                )
                result = FeedResult(
                    feed_id, error=FeedNotSubscribedError(message, feed_id=feed_id, status=status)
                )
            else:
                result = FeedPass(
                    client,
                    ledger,
                    spool,
                    feed_id,
                    concurrency=concurrency,
                    progress=progress,
                    signing_key=signing_key,
                    overlap=overlap,
                    report_grace=report_grace,
                ).run()
        if metrics is not None:
            metrics.feed_done(result)
        log.finished(
            feed_id,
            now_stix_time(),
            error=None if result.error is None else str(result.error),
            records=result.records_listed,
            files=result.counts.files_written,
        )
        if result.ok:
            logger.info("feed done: %s", result.summary(), extra={"feed_id": feed_id})
        else:
            # The one place a feed's error is reported; the CLI's summary only says FAILED.
            logger.error("feed %s failed: %s", feed_id, result.error, extra={"feed_id": feed_id})
        results.append(result)
    return results
