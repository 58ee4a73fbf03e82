"""``ctx-fetcher audit``: proof that the spool files carry the newest version of every object.

A feed's objects listing is read again from its start, one page after another through one
:class:`fetcher.ctx.walk.CursorWalk` (no segments, no workers: the simplest reading there is, so that
it shares no fault with the pass's), into a scratch :class:`fetcher.state.mirror.Mirror` in a temporary
directory: the same version rules as a pass, on disk, so memory stays flat on big feeds. That
mirror is then compared with the fetcher's state, opened read-only (no lock, nothing written: the
audit runs beside ``ctx-fetcher run``):

* an object whose newest version is not the one the state records as carried by a published file
  (the mirror's ``written``; an object the state does not hold counts too) is *in no file*;
* a report whose newest version a file carries, written without objects it names
  (:meth:`fetcher.state.gaps.ReportGaps.incomplete`) that the listing holds, *lacks members*. Objects it
  names that the listing does not hold are listed apart, as information: no pass could write them.

A record stored after the audit read past it is not seen; one stored while the audit reads, and
not yet fetched by a pass, is reported in no file: audit after a pass, not during an upload.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetcher.ctx.client import CTXClient
from fetcher.ctx.listing import open_walk
from fetcher.ctx.walk import PageLimit
from fetcher.state.gaps import GapCounts
from fetcher.state.ledger import Ledger
from fetcher.state.mirror import Mirror

logger = logging.getLogger(__name__)

#: Called after each page read: the feed, and the records read from it so far.
AuditProgress = Callable[[str, int], None]

#: Ids compared with the state per query.
CHUNK = 1000


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclass
class FeedAudit:
    """What the audit found for one feed."""

    feed_id: str
    #: Records the listing served (every version, repeats and storage artefacts included).
    records: int = 0
    #: Objects the listing holds (one per STIX id, storage artefacts left out).
    objects: int = 0
    #: Objects whose newest version no published file carries.
    not_in_files: list[str] = field(default_factory=list)
    #: Reports whose newest version a file carries without these objects, which the listing holds.
    lacking: dict[str, list[str]] = field(default_factory=dict)
    #: Objects such reports name that the listing does not hold (information only).
    not_listed: dict[str, list[str]] = field(default_factory=dict)
    #: Reports the fetcher holds back, waiting for objects they name (fetcher.state.gaps): they and
    #: what they carry are in no file yet, by design.
    waiting: int = 0

    @property
    def complete(self) -> bool:
        return not self.not_in_files and not self.lacking

    def summary(self) -> str:
        """The line ``audit`` prints for the feed."""
        head = f"{self.feed_id}: {self.records} records, {self.objects} objects"
        if self.complete:
            return f"{head}, complete"
        found = []
        if self.not_in_files:
            found.append(f"{_plural(len(self.not_in_files), 'object')} in no file")
        if self.lacking:
            found.append(f"{_plural(len(self.lacking), 'report')} lacking members")
        if self.waiting:
            found.append(
                f"of which {_plural(self.waiting, 'report')} and what they carry wait for "
                "objects they name (written when those arrive, or after "
                "CYBERTHREATEXCHANGE_REPORT_GRACE_MINUTES)"
            )
        return f"{head}, {', '.join(found)}"

    def as_dict(self) -> dict[str, Any]:
        """The feed's entry in ``audit --json``."""
        return {
            "feed_id": self.feed_id,
            "complete": self.complete,
            "records": self.records,
            "objects": self.objects,
            "not_in_files": self.not_in_files,
            "reports_lacking_members": self.lacking,
            "members_not_listed": self.not_listed,
            "reports_waiting": self.waiting,
        }


def audit_feed(
    client: CTXClient, state: Ledger, feed_id: str, *, progress: AuditProgress | None = None
) -> FeedAudit:
    """Read ``feed_id``'s listing from its start and compare it with ``state`` (read-only)."""
    result = FeedAudit(feed_id)
    with (
        tempfile.TemporaryDirectory(prefix="ctx-audit-") as scratch_dir,
        Ledger(Path(scratch_dir)) as scratch,
    ):
        listing = scratch.mirror
        result.records = _read_listing(client, scratch, listing, feed_id, progress)
        written = state.mirror
        for reports in (True, False):
            for ids in listing.pending(feed_id, reports=reports, limit=CHUNK):
                kept = listing.get(feed_id, ids)
                carried = written.written(feed_id, ids)
                result.objects += len(ids)
                result.not_in_files += [i for i in ids if carried.get(i) != kept[i].sha256]
        gaps = state.gaps
        _check_reports(result, listing, written, gaps.incomplete(feed_id))
        result.waiting = gaps.counts().get(feed_id, GapCounts()).waiting
    logger.info(
        "audit: %s",
        result.summary(),
        extra={
            "feed_id": feed_id,
            "records": result.records,
            "objects": result.objects,
            "not_in_files": len(result.not_in_files),
            "reports_lacking_members": len(result.lacking),
        },
    )
    return result


def _read_listing(
    client: CTXClient,
    scratch: Ledger,
    listing: Mirror,
    feed_id: str,
    progress: AuditProgress | None,
) -> int:
    walk = open_walk(client, feed_id, None, PageLimit())
    records = 0
    while True:
        step = walk.step()
        # Not durable: the scratch state is thrown away whatever happens.
        with scratch.batch(durable=False):
            listing.apply_pages(feed_id, [(step.objects, step.served)])
        records += len(step.objects)
        if progress is not None:
            progress(feed_id, records)
        if step.done:
            return records


def _check_reports(
    result: FeedAudit, listing: Mirror, written: Mirror, gaps: dict[str, list[str]]
) -> None:
    """Fill ``result.lacking`` and ``result.not_listed`` from the state's incomplete reports."""
    if not gaps:
        return
    reports = listing.get(result.feed_id, gaps)
    carried = written.written(result.feed_id, list(gaps))
    held = _held(listing, result.feed_id, {m for members in gaps.values() for m in members})
    for report_id, members in gaps.items():
        kept = reports.get(report_id)
        if kept is None or carried.get(report_id) != kept.sha256:
            # Not listed any more, or its newest version is in no file (counted as such).
            continue
        lacking = [m for m in members if m in held]
        unlisted = [m for m in members if m not in held]
        if lacking:
            result.lacking[report_id] = lacking
        if unlisted:
            result.not_listed[report_id] = unlisted


def _held(listing: Mirror, feed_id: str, ids: set[str]) -> set[str]:
    ordered = sorted(ids)
    found: set[str] = set()
    for start in range(0, len(ordered), CHUNK):
        found |= set(listing.get(feed_id, ordered[start : start + CHUNK]))
    return found
