"""``ctx-fetcher reset``: the next pass re-reads one feed from a date, or from its start.

A reset is carried out in two steps, so that a fetcher killed between them loses nothing:

1. :func:`reset_feed` (the command, under the state lock): the feed's listing cursor moves back to
   just below the date (or is dropped: from the start), and a row in ``resets`` says what the next
   pass must do with what it reads again.
2. :func:`fetcher.passes.feed.redeliver` (the next pass, for each group of pages read): the mirror keeps a record
   unchanged when its content is the one it holds (:meth:`fetcher.state.mirror.Mirror.apply_pages`), so
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from fetcher.commands.loading import settings_without_key
from fetcher.commands.lock import StateLock
from fetcher.commands.status import read_state
from fetcher.ctx.record_time import just_below
from fetcher.errors import FetcherError
from fetcher.settings import SpoolStateSettings
from fetcher.state.ledger import LISTING_CURSOR, Ledger, open_state
from fetcher.state.pass_log import PendingReset
from shared.cli import config_option
from shared.errors import SpoolError, UnsafeNameError
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
    ledger.request_reset(PendingReset(feed_id, after, rewrite, now_stix_time()))
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


@click.command()
@config_option
@click.option("--feed", "feed_id", required=True, help="The feed's UUID.")
@click.option(
    "--since",
    "since",
    default=None,
    metavar="ISO-8601",
    help="Re-read the records CTX stored from this date or date-time (UTC if no zone is given).",
)
@click.option("--all", "from_start", is_flag=True, help="Re-read the feed from its start.")
@click.option(
    "--rewrite",
    is_flag=True,
    help="Write the files of what is re-read again, even those whose content did not change.",
)
def reset(
    config_path: Path | None, feed_id: str, since: str | None, from_start: bool, rewrite: bool
) -> None:
    """The next pass re-reads one feed from a date (--since) or from its start (--all).

    Without --rewrite only files whose content changed are written. Refused while another
    ctx-fetcher (`run` or `once`) uses the state: stop it first.
    """
    if (since is None) == (not from_start):
        raise click.UsageError("give exactly one of --since DATE and --all")
    try:
        when = None if since is None else parse_since(since)
        feed_id = check_feed_id(feed_id.strip())
    except (ValueError, UnsafeNameError) as exc:
        raise click.BadParameter(str(exc)) from None
    settings = settings_without_key(SpoolStateSettings, config_path)
    try:
        # A wrong SPOOL_DIR is refused before anything is created in it.
        with open_state(settings.spool_dir, settings.effective_state_dir) as existing:
            known = {feed.feed_id for feed in read_state(existing, ())}
        if feed_id not in known:
            raise click.ClickException(
                f"the fetcher state has no feed {feed_id} (it knows: "
                f"{', '.join(sorted(known)) or 'none'}); nothing to reset"
            )
        with (
            StateLock(settings.effective_state_dir),
            Ledger(settings.effective_state_dir) as ledger,
        ):
            outcome = reset_feed(ledger, feed_id, since=when, rewrite=rewrite)
    except (FetcherError, SpoolError) as exc:
        raise click.ClickException(str(exc)) from None
    if outcome.after == outcome.before:
        # The cursor never moves forward (fetcher.commands.reset): a date after it re-reads nothing.
        where = outcome.before or "the start of the feed"
        click.echo(
            f"{feed_id}: the next pass already reads from {where}, "
            + ("" if since is None else f"before {since.strip()}, ")
            + "so nothing changes"
        )
        return
    start = outcome.after or "the start of the feed"
    click.echo(
        f"{feed_id}: the next pass reads from {start} (was {outcome.before or 'the start'}); "
        + ("its files are written again" if rewrite else "only changed files are written")
    )
