"""One pass: for each configured feed, the listing into the mirror, then the mirror into files.

Per feed:

1. read ``v1/feeds/{feed}/objects/`` from a while before the feed's cursor (the overlap: the
   server stamps a record when it prepares it, not when it becomes visible, so records appear
   below times the listing already served) in parallel segments (:mod:`fetcher.segments`) into
   the mirror (:mod:`fetcher.mirror`), one commit per group of pages together with the cursor
   that is safe after it; the cursor never moves back;
2. write a file for every report whose newest version is not yet in the spool and whose named
   objects are all in the mirror (or have been awaited long enough, :mod:`fetcher.gaps`), and
   feed-level files for every other object whose newest version no file carries
   (:mod:`fetcher.assemble`).

Both steps are idempotent: a pass killed anywhere leaves a cursor at or before what the mirror
holds and the mirror's pending marks on what no published file carries, so the next pass
writes exactly what is missing and nothing twice.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from fetcher.answers import Subscription
from fetcher.assemble import Assembler, Counts
from fetcher.client import CTXClient
from fetcher.errors import FeedNotSubscribedError, FetcherError
from fetcher.gaps import ReportGaps
from fetcher.mirror import Mirror
from fetcher.pass_metrics import PassMetrics
from fetcher.pass_result import FeedResult, Progress
from fetcher.passes import PassLog
from fetcher.reset import redeliver
from fetcher.segments import ListingReader
from fetcher.settings import FetcherSettings
from fetcher.state import LISTING_CURSOR, Ledger
from fetcher.walk import earlier
from fetcher.workers import Workers
from shared.durable import remove_stale_temps
from shared.errors import SpoolError
from shared.layout import Spool, check_feed_id
from shared.signing import SigningKey
from shared.timestamps import now_stix_time

logger = logging.getLogger(__name__)

# A temp file this old belongs to a write that died: publishing one file takes milliseconds.
STALE_TEMP_SECONDS = 15 * 60
#: The settings' defaults, for callers that have no settings.
DEFAULT_OVERLAP = timedelta(minutes=FetcherSettings.model_fields["overlap_minutes"].default)
DEFAULT_REPORT_GRACE = timedelta(
    minutes=FetcherSettings.model_fields["report_grace_minutes"].default
)
#: Pages read ahead of the one being applied (100 objects each at most: a few MB).
READ_AHEAD_PAGES = 16


class FeedSync:
    """One pass over one feed."""

    def __init__(
        self,
        client: CTXClient,
        ledger: Ledger,
        spool: Spool,
        feed_id: str,
        *,
        concurrency: int,
        workers: Workers,
        progress: Progress | None = None,
        signing_key: SigningKey | None = None,
        overlap: timedelta = DEFAULT_OVERLAP,
        report_grace: timedelta = DEFAULT_REPORT_GRACE,
    ) -> None:
        self.overlap = overlap
        self.report_grace = report_grace
        self.client = client
        self.workers = workers
        self.ledger = ledger
        self.mirror = Mirror(ledger)
        self.spool = spool
        self.feed_id = check_feed_id(feed_id)
        self.concurrency = concurrency
        self.signing_key = signing_key
        self.result = FeedResult(self.feed_id)
        self._progress = progress

    def _tick(self) -> None:
        if self._progress is not None:
            self._progress(self.result)

    def run(self) -> FeedResult:
        """Run the pass; errors end up in ``result.error``, never raised."""
        try:
            self._read_listing()
            self._assemble()
        except (FetcherError, SpoolError) as exc:
            if isinstance(exc, FetcherError) and exc.feed_id is None:
                exc.feed_id = self.feed_id
            self.result.error = exc
        return self.result

    def _read_listing(self) -> None:
        cursor = self.ledger.cursor(self.feed_id, LISTING_CURSOR)
        reset = PassLog(self.ledger).pending_resets().get(self.feed_id)
        gaps = ReportGaps(self.ledger)
        reader = ListingReader(
            self.client,
            self.feed_id,
            None if cursor is None else earlier(cursor, self.overlap),
            workers=self.concurrency,
            buffered=READ_AHEAD_PAGES,
            hold=cursor,
        )
        try:
            for group in reader:
                # Not durable: a page lost to a power cut is read again (Ledger.batch).
                with self.ledger.batch(durable=False):
                    applied = self.mirror.apply_pages(
                        self.feed_id, [(item.step.objects, item.step.served) for item in group]
                    )
                    # An object a written report lacked has arrived: that report is written
                    # again, with it.
                    self.mirror.forget_written(
                        self.feed_id, gaps.awaiting(self.feed_id, applied.new_ids)
                    )
                    for item in group:
                        reader.applied(item)
                        self.result.records_listed += len(item.step.objects)
                    if reset is not None:
                        redeliver(
                            self.ledger,
                            self.mirror,
                            self.feed_id,
                            (obj for item in group for obj in item.step.objects),
                            rewrite=reset.rewrite,
                        )
                    self.result.records_kept += applied.changed
                    checkpoint = reader.checkpoint()
                    # The overlap reads below the cursor: what it finds moves it back never.
                    if checkpoint is not None and (cursor is None or checkpoint > cursor):
                        self.ledger.set_cursor(self.feed_id, LISTING_CURSOR, checkpoint)
                        cursor = checkpoint
                self._tick()
        finally:
            reader.close()
        if reset is not None:
            # Read to the end: everything at or after the reset's date went through redeliver().
            PassLog(self.ledger).clear_reset(self.feed_id)
        logger.debug(
            "objects listing read",
            extra={
                "feed_id": self.feed_id,
                "segments": reader.segments,
                "records": self.result.records_listed,
            },
        )

    def _assemble(self) -> None:
        def progress(counts: Counts) -> None:
            self.result.take(counts)
            self._tick()

        assembler = Assembler(
            self.mirror,
            self.ledger,
            self.spool,
            self.feed_id,
            self.workers,
            signing_key=self.signing_key,
            progress=progress,
            grace=self.report_grace,
        )
        self.result.take(assembler.run())


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
    # The processes that write files start now, while the pass mostly waits for the network, and
    # serve every feed of the pass (fetcher.workers).
    with Workers.for_concurrency(ledger, concurrency) as workers:
        workers.start()
        return _run_feeds(
            client,
            ledger,
            spool,
            feed_ids,
            concurrency=concurrency,
            workers=workers,
            progress=progress,
            stop=stop,
            signing_key=signing_key,
            overlap=overlap,
            report_grace=report_grace,
            metrics=metrics,
        )


def _run_feeds(
    client: CTXClient,
    ledger: Ledger,
    spool: Spool,
    feed_ids: tuple[str, ...],
    *,
    concurrency: int,
    workers: Workers,
    progress: Progress | None,
    stop: threading.Event | None,
    signing_key: SigningKey | None,
    overlap: timedelta,
    report_grace: timedelta,
    metrics: PassMetrics | None,
) -> list[FeedResult]:
    try:
        subscriptions: dict[str, Subscription] | None = {
            sub.feed_id: sub for sub in client.subscriptions()
        }
        failure: FetcherError | None = None
    except FetcherError as exc:
        subscriptions, failure = None, exc
    results = []
    log = PassLog(ledger)
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
                result = FeedSync(
                    client,
                    ledger,
                    spool,
                    feed_id,
                    concurrency=concurrency,
                    workers=workers,
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
            files=result.files_written,
        )
        if result.ok:
            logger.info("feed done: %s", result.summary(), extra={"feed_id": feed_id})
        else:
            # The one place a feed's error is reported; the CLI's summary only says FAILED.
            logger.error("feed %s failed: %s", feed_id, result.error, extra={"feed_id": feed_id})
        results.append(result)
    return results
