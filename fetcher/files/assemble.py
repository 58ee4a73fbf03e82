"""Spool files from the mirror: one file per new or changed report, then feed-level files.

What a file holds is :mod:`fetcher.files.writer`'s job. This module decides what is pending and
records what was written: it takes pending reports a commit's worth at a time, has their files
built and published, and then records them, one durable commit per batch. Every pending object
that no report file carried goes into feed-level files of at most :data:`OBJECTS_PER_FILE`
objects, except what a waiting report would carry: that waits with it, so that its file carries
it and no feed-level file before.

A report that names objects the mirror lacks waits (:mod:`fetcher.state.gaps`) for at most ``grace``
from when it was first found lacking one; then it is written with what exists, with a warning
naming what it lacks, and written again when one of those arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fetcher.files.writer import Built, FileWriter
from fetcher.state.ledger import Ledger
from shared.layout import FEED_OBJECTS_SUBJECT, Spool
from shared.signing import SigningKey
from shared.timestamps import format_stix_time

logger = logging.getLogger(__name__)

OBJECTS_PER_FILE = 1000
#: Report files recorded in one durable commit (a commit is an fsync of the database's log).
REPORTS_PER_COMMIT = 64


@dataclass
class Counts:
    """What assembling wrote for one feed."""

    reports_written: int = 0
    reports_unchanged: int = 0
    objects_files_written: int = 0
    objects_written: int = 0
    #: Reports not written because they wait for objects they name.
    reports_waiting: int = 0
    #: Reports written without some objects they name (their grace ran out).
    reports_incomplete: int = 0

    @property
    def files_written(self) -> int:
        return self.reports_written + self.objects_files_written


class Assembler:
    """Writes the pending files of one feed. Call :meth:`run` once, after the listing is read."""

    def __init__(
        self,
        ledger: Ledger,
        spool: Spool,
        feed_id: str,
        *,
        signing_key: SigningKey | None = None,
        progress: Callable[[Counts], None] | None = None,
        grace: timedelta,
        counts: Counts | None = None,
    ) -> None:
        self.mirror = ledger.mirror
        self.ledger = ledger
        self.gaps = ledger.gaps
        self.feed_id = feed_id
        now = datetime.now(UTC)
        self._now = format_stix_time(now)
        self.writer = FileWriter(
            ledger,
            spool,
            feed_id,
            signing_key,
            wait_cutoff=format_stix_time(now - grace) if grace else None,
        )
        #: Filled as files are recorded (a pass hands in its result's, to show them as they grow).
        self.counts = Counts() if counts is None else counts
        #: What waiting reports would carry: kept out of feed-level files.
        self._held: set[str] = set()
        self._progress = progress

    def run(self) -> Counts:
        for ids in self.mirror.pending(self.feed_id, reports=True, limit=REPORTS_PER_COMMIT):
            self._record_all(self.writer.reports(ids))
        for ids in self.mirror.pending(self.feed_id, reports=False, limit=OBJECTS_PER_FILE):
            free = [object_id for object_id in ids if object_id not in self._held]
            if free:
                self._record_all(self.writer.objects(free))
        return self.counts

    def _record_all(self, built: list[Built]) -> None:
        """Record files the writer has published (and made durable), in one commit."""
        with self.ledger.batch():
            for item in built:
                self._record(item)

    def _record(self, built: Built) -> None:
        report = built.subject != FEED_OBJECTS_SUBJECT
        written = built.written
        if built.waiting:
            self._wait(built)
            return
        if built.missing:
            logger.debug(
                "report refers to objects the feed does not hold",
                extra={
                    "feed_id": self.feed_id,
                    "report_id": built.subject,
                    "missing": built.missing,
                },
            )
        if report:
            self._settle_gaps(built)
            self.ledger.record_report(self.feed_id, built.subject, built.sha, str(built.rel))
            if written:
                self.counts.reports_written += 1
                logger.debug(
                    "report bundle written", extra={"feed_id": self.feed_id, "file": str(built.rel)}
                )
            else:
                self.counts.reports_unchanged += 1
        elif written:
            self.counts.objects_files_written += 1
            self.counts.objects_written += built.objects
            logger.debug(
                "objects bundle written",
                extra={"feed_id": self.feed_id, "file": str(built.rel), "objects": built.objects},
            )
        self.mirror.mark_written(self.feed_id, built.shas)
        if self._progress is not None:
            self._progress(self.counts)

    def _wait(self, built: Built) -> None:
        """A report that waits: what it lacks is recorded, what it would carry held back."""
        self.counts.reports_waiting += 1
        self._held.update(built.shas)
        self._record_gap(built, written=False)
        logger.debug(
            "report waits for objects it names",
            extra={"feed_id": self.feed_id, "report_id": built.subject, "lacking": built.lacking},
        )

    def _record_gap(self, built: Built, *, written: bool) -> None:
        since = built.lacking_since or self._now
        self.gaps.record(self.feed_id, built.subject, built.lacking, since=since, written=written)

    def _settle_gaps(self, built: Built) -> None:
        """A report file published: what it still lacks (past the grace) is recorded, so that
        its arrival writes the report again; a complete report has nothing recorded."""
        if not built.lacking:
            if built.lacking_since is not None:
                self.gaps.record(self.feed_id, built.subject, [], since="", written=True)
            return
        self.counts.reports_incomplete += 1
        self._record_gap(built, written=True)
        if built.written:
            logger.warning(
                "report %s written without %d objects it names, which CTX has not listed: %s",
                built.subject,
                len(built.lacking),
                ", ".join(built.lacking),
                extra={"feed_id": self.feed_id, "report_id": built.subject},
            )
