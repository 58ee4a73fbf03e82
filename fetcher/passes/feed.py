"""One pass: for each configured feed, the listing into the mirror, then the mirror into files.

Per feed:

1. read ``v1/feeds/{feed}/objects/`` from a while before the feed's cursor (the overlap: the
   server stamps a record when it prepares it, not when it becomes visible, so records appear
   below times the listing already served) in parallel segments (:mod:`fetcher.ctx.segments`) into
   the mirror (:mod:`fetcher.state.mirror`), one commit per group of pages together with the cursor
   that is safe after it; the cursor never moves back;
2. write a file for every report whose newest version is not yet in the spool and whose named
   objects are all in the mirror (or have been awaited long enough, :mod:`fetcher.state.gaps`), and
   feed-level files for every other object whose newest version no file carries
   (:mod:`fetcher.files.assemble`).

Both steps are idempotent: a pass killed anywhere leaves a cursor at or before what the mirror
holds and the mirror's pending marks on what no published file carries, so the next pass
writes exactly what is missing and nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from fetcher.ctx.client import CTXClient
from fetcher.ctx.reader import ListingReader
from fetcher.ctx.record_time import earlier
from fetcher.errors import FetcherError
from fetcher.files.assemble import Assembler
from fetcher.passes.result import FeedResult, Progress
from fetcher.settings import FetcherSettings
from fetcher.state.ledger import LISTING_CURSOR, Ledger
from fetcher.stix import JSONDict
from shared.errors import SpoolError
from shared.layout import Spool, check_feed_id
from shared.signing import SigningKey

logger = logging.getLogger(__name__)

#: The settings' defaults, for callers that have no settings.
DEFAULT_OVERLAP = timedelta(minutes=FetcherSettings.model_fields["overlap_minutes"].default)
DEFAULT_REPORT_GRACE = timedelta(
    minutes=FetcherSettings.model_fields["report_grace_minutes"].default
)
#: Pages read ahead of the one being applied (100 objects each at most: a few MB).
READ_AHEAD_PAGES = 16


class FeedPass:
    """One pass over one feed."""

    def __init__(
        self,
        client: CTXClient,
        ledger: Ledger,
        spool: Spool,
        feed_id: str,
        *,
        concurrency: int,
        progress: Progress | None = None,
        signing_key: SigningKey | None = None,
        overlap: timedelta = DEFAULT_OVERLAP,
        report_grace: timedelta = DEFAULT_REPORT_GRACE,
    ) -> None:
        self.overlap = overlap
        self.report_grace = report_grace
        self.client = client
        self.ledger = ledger
        self.mirror = ledger.mirror
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
        reset = self.ledger.passes.pending_resets().get(self.feed_id)
        gaps = self.ledger.gaps
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
            self.ledger.passes.clear_reset(self.feed_id)
        logger.debug(
            "objects listing read",
            extra={
                "feed_id": self.feed_id,
                "segments": reader.segments,
                "records": self.result.records_listed,
            },
        )

    def _assemble(self) -> None:
        Assembler(
            self.ledger,
            self.spool,
            self.feed_id,
            signing_key=self.signing_key,
            progress=lambda _counts: self._tick(),
            grace=self.report_grace,
            counts=self.result.counts,
        ).run()


def redeliver(ledger: Ledger, feed_id: str, objects: Iterable[JSONDict], *, rewrite: bool) -> None:
    """Hand what a pass carrying out a reset read again back to the assemble step (inside the
    ledger's batch): :mod:`fetcher.commands.reset` says what and why."""
    reports: list[str] = []
    others: list[str] = []
    for obj in objects:
        object_id = obj.get("id")
        if isinstance(object_id, str):
            (reports if obj.get("type") == "report" else others).append(object_id)
    ledger.mirror.forget_written(
        feed_id, list(dict.fromkeys(reports + others if rewrite else reports))
    )
    if rewrite and reports:
        ledger.forget_reports(feed_id, reports)
