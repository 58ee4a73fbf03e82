"""``ctx-fetcher reset``: the next pass re-reads one feed from a date, or from its start.

A reset is carried out in two steps, so that a fetcher killed between them loses nothing:

1. :func:`reset_feed` (the command, under the state lock): the feed's listing cursor moves back to
   just below the date (or is dropped: from the start), and a row in ``resets`` says what the next
   pass must do with what it reads again.
2. :func:`redeliver` (the next pass, for each group of pages read): the mirror keeps a record
   unchanged when its content is the one it holds (:meth:`fetcher.mirror.Mirror.apply_pages`), so
   a plain re-read would reach no file. The pass therefore clears the mirror's ``written`` mark of
   what it reads again (the mirror's documented meaning of NULL: "no published file carries it
   yet") so that the assemble step looks at it once more:

   * without ``rewrite``, only reports: the assembler still compares each report's file with the
     sha256 the ledger holds for it and writes it only if its content changed;
   * with ``rewrite``, every object read again, and the reports' ledger entries are dropped, so
     their files are written again (a file still in ``incoming/`` under the same content-addressed
     name is left as it is; one the uploader moved on is published again).

   The ``resets`` row goes once the feed's listing has been read to its end; a pass that fails
   before that keeps it, and the next one goes on from the saved cursor with the same rule.

The date is compared with the server's record times (``_record_modified``, the ``added_after``
filter), not with the objects' ``modified``: it says when CTX stored a record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from fetcher.mirror import Mirror
from fetcher.passes import PassLog, PendingReset
from fetcher.state import LISTING_CURSOR, Ledger, Statement
from fetcher.stix import JSONDict
from fetcher.walk import just_below
from shared.layout import check_feed_id
from shared.timestamps import format_stix_time, now_stix_time

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResetOutcome:
    """What :func:`reset_feed` changed: the cursor before and after (None: from the start)."""

    feed_id: str
    before: str | None
    after: str | None
    rewrite: bool


def parse_since(text: str) -> datetime:
    """An ISO 8601 date or date-time (``2026-01-31``, ``2026-01-31T12:00:00Z``) as UTC.

    A time without a zone is taken as UTC. Raises ValueError with a readable message.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 date or date-time (e.g. 2026-01-31 or "
            "2026-01-31T12:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def reset_feed(
    ledger: Ledger, feed_id: str, *, since: datetime | None, rewrite: bool
) -> ResetOutcome:
    """Move ``feed_id``'s cursor back to ``since`` (None: to the start) and record the reset.

    The cursor never moves forward: when the feed was not read as far as ``since`` yet, it stays
    where it is (what lies after it has not been read, so the next pass reads it anyway).
    """
    feed_id = check_feed_id(feed_id)
    before = ledger.cursor(feed_id, LISTING_CURSOR)
    # added_after is strict (``_record_modified > added_after``): one microsecond below the date
    # serves the records stored at exactly that time too.
    target = None if since is None else just_below(format_stix_time(since))
    after = None if before is None or target is None else min(before, target)
    statements: list[Statement] = []
    if after is None:
        statements.append(
            ("DELETE FROM cursors WHERE feed_id = ? AND name = ?", (feed_id, LISTING_CURSOR))
        )
    elif after != before:
        statements.append(
            (
                "UPDATE cursors SET value = ? WHERE feed_id = ? AND name = ?",
                (after, feed_id, LISTING_CURSOR),
            )
        )
    with ledger.batch():
        ledger.write(statements)
        PassLog(ledger).request_reset(PendingReset(feed_id, after, rewrite, now_stix_time()))
    if after == before:
        logger.info(
            "feed reset: the next pass already reads it from %s; nothing changes",
            after or "its start",
            extra={"feed_id": feed_id},
        )
    else:
        logger.info(
            "feed reset: the next pass reads it from %s%s",
            after or "its start",
            " and writes its files again" if rewrite else "",
            extra={"feed_id": feed_id},
        )
    return ResetOutcome(feed_id, before, after, rewrite)


def redeliver(
    ledger: Ledger, mirror: Mirror, feed_id: str, objects: Iterable[JSONDict], *, rewrite: bool
) -> None:
    """Hand what the pass read again back to the assemble step (inside the ledger's batch)."""
    reports: list[str] = []
    others: list[str] = []
    for obj in objects:
        object_id = obj.get("id")
        if isinstance(object_id, str):
            (reports if obj.get("type") == "report" else others).append(object_id)
    mirror.forget_written(feed_id, list(dict.fromkeys(reports + others if rewrite else reports)))
    if rewrite and reports:
        ledger.forget_reports(feed_id, reports)
