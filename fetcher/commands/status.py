"""``ctx-fetcher state`` and ``ctx-fetcher health``: read from the fetcher's state only.

Nothing here takes the state lock, writes, or talks to CTX: ``health`` runs as a container's
HEALTHCHECK beside a running fetcher, every few seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fetcher.commands.loading import settings_without_key
from fetcher.errors import FetcherError
from fetcher.settings import ScheduleSettings
from fetcher.state.gaps import GapCounts
from fetcher.state.ledger import LISTING_CURSOR, Ledger, open_state
from fetcher.state.pass_log import PassRecord, PendingReset
from shared.cli import config_option
from shared.errors import SpoolError

if TYPE_CHECKING:
    from rich.console import Console

#: ``health`` fails when the last pass ended longer ago than this many intervals.
STALE_INTERVALS = 2


@dataclass(frozen=True)
class FeedState:
    """One feed as the state records it."""

    feed_id: str
    configured: bool
    cursor: str | None
    passes: PassRecord | None
    reset: PendingReset | None
    #: Reports waiting for objects they name, and reports written without some.
    gaps: GapCounts

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` form (times in ISO 8601 UTC, null when unknown)."""
        p = self.passes
        return {
            "feed_id": self.feed_id,
            "configured": self.configured,
            "cursor": self.cursor,
            "last_pass": None
            if p is None or p.last_ended_at is None
            else {
                "started_at": p.last_started_at,
                "ended_at": p.last_ended_at,
                "result": p.last_result,
                "records_listed": p.last_records,
                "files_written": p.last_files,
            },
            "running_since": p.started_at if p is not None and p.running else None,
            "last_success_at": None if p is None else p.last_ok_at,
            "files_written_total": 0 if p is None else p.files_total,
            "last_error": None if p is None else p.error,
            "last_error_at": None if p is None else p.error_at,
            "reset_pending": None
            if self.reset is None
            else {"from": self.reset.since, "rewrite": self.reset.rewrite},
            "reports_waiting": self.gaps.waiting,
            "reports_incomplete": self.gaps.incomplete,
        }


def read_state(ledger: Ledger, configured: tuple[str, ...]) -> list[FeedState]:
    """Every configured feed, then every other feed the state knows, in that order."""
    cursors = ledger.cursors()
    passes = ledger.passes.records()
    resets = ledger.passes.pending_resets()
    # A state file older than the report_gaps table (schema 2) has none: zero of each.
    gaps = ledger.gaps.counts()
    known = {feed for feed, _ in cursors} | set(passes) | set(resets)
    feeds = list(configured) + sorted(known - set(configured))
    return [
        FeedState(
            feed_id,
            feed_id in configured,
            cursors.get((feed_id, LISTING_CURSOR)),
            passes.get(feed_id),
            resets.get(feed_id),
            gaps.get(feed_id, GapCounts()),
        )
        for feed_id in feeds
    ]


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def health_problems(
    states: list[FeedState], *, interval_seconds: float, now: datetime | None = None
) -> list[str]:
    """One sentence per configured feed that is not healthy; empty when all are."""
    now = now or datetime.now(UTC)
    limit = timedelta(seconds=STALE_INTERVALS * interval_seconds)
    problems = []
    for feed in states:
        if not feed.configured:
            continue
        p = feed.passes
        if p is None or p.last_ended_at is None:
            under_way = (
                f" (one is under way since {p.started_at})" if p is not None and p.running else ""
            )
            problems.append(f"feed {feed.feed_id}: no pass has finished yet{under_way}")
        elif p.last_result != "ok":
            problems.append(
                f"feed {feed.feed_id}: the last pass failed at {p.last_ended_at}: {p.error}"
            )
        elif now - _when(p.last_ended_at) > limit:
            problems.append(
                f"feed {feed.feed_id}: the last pass ended {_age(now - _when(p.last_ended_at))} "
                f"ago ({p.last_ended_at}), more than {STALE_INTERVALS} intervals "
                f"({_age(timedelta(seconds=interval_seconds))} each)"
            )
    return problems


def health_line(problems: list[str], feeds: int) -> str:
    """The one line ``health`` prints."""
    if not problems:
        return f"healthy: the last pass of each of the {feeds} configured feed(s) went well"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"unhealthy: {problems[0]}{more}"


def _short(value: str | None) -> str:
    # 2026-12-02T21:36:23.123456Z -> 2026-12-02 21:36:23Z: seconds are enough on a screen.
    if not value:
        return "-"
    return value[:19].replace("T", " ") + "Z"


#: Narrower than this, ``state`` prints a block per feed: seven columns would fold every cell.
TABLE_MIN_WIDTH = 140


COLUMNS = (
    "FEED",
    "CURSOR",
    "LAST PASS",
    "RESULT",
    "FILES LAST/ALL",
    "REPORTS WAITING/INCOMPLETE",
    "LAST ERROR",
)


def _row(feed: FeedState) -> tuple[str, ...]:
    """What ``state`` shows of one feed, by column."""
    p = feed.passes
    cursor = feed.cursor or "start of feed"
    if feed.reset is not None:
        rewrite = ", files rewritten" if feed.reset.rewrite else ""
        cursor += f" (reset pending{rewrite})"
    if p is None or p.last_ended_at is None:
        last, result, files = "never finished", "-", f"0/{0 if p is None else p.files_total}"
    else:
        last = f"{_short(p.last_started_at)} - {_short(p.last_ended_at)}"
        result = p.last_result or "-"
        files = f"{p.last_files}/{p.files_total}"
    if p is not None and p.running:
        result += f"; started {_short(p.started_at)}, not finished"
    return (
        feed.feed_id if feed.configured else f"{feed.feed_id} (not configured)",
        cursor,
        last,
        result,
        files,
        f"{feed.gaps.waiting}/{feed.gaps.incomplete}",
        "-" if p is None or p.error is None else f"{_short(p.error_at)}: {p.error}",
    )


def render_table(states: list[FeedState], console: Console) -> None:
    """The table ``state`` prints, or a block per feed on a narrow terminal (``--json`` gives
    every field unabridged)."""
    from rich.table import Table  # only this command draws tables: not every start-up pays rich

    rows = [_row(feed) for feed in states]
    if console.width < TABLE_MIN_WIDTH:
        for row in rows:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True)
            grid.add_column(overflow="fold")
            for column, value in zip(COLUMNS[1:], row[1:], strict=True):
                grid.add_row(f"  {column.lower()}", value)
            console.print(row[0], grid, sep="\n")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _read_state(settings: ScheduleSettings) -> list[FeedState]:
    try:
        with open_state(settings.spool_dir, settings.effective_state_dir) as ledger:
            return read_state(ledger, settings.feed_ids)
    except (FetcherError, SpoolError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def state(config_path: Path | None, as_json: bool) -> None:
    """Where each feed stands: cursor, last pass, files written, reports waiting for objects they
    name or written without some, last error. Read-only."""
    settings = settings_without_key(ScheduleSettings, config_path)
    states = _read_state(settings)
    if as_json:
        document = {
            "spool_dir": str(settings.spool_dir.absolute()),
            "state_dir": str(settings.effective_state_dir.absolute()),
            "interval_seconds": settings.interval_seconds,
            "feeds": [feed.as_dict() for feed in states],
        }
        click.echo(json.dumps(document, indent=2))
        return
    from rich.console import Console

    console = Console()
    # Off a terminal (a pipe, a log): wide enough that only the error column folds.
    render_table(states, console if console.is_terminal else Console(width=240))


@click.command()
@config_option
def health(config_path: Path | None) -> None:
    """Exit 0 when the last pass of every configured feed went well and is recent.

    Non-zero, with one line saying why, when a feed's last pass failed, ended more than twice the
    interval ago, or never finished. Reads the state only: no lock, no network (a HEALTHCHECK).
    """
    settings = settings_without_key(ScheduleSettings, config_path)
    problems = health_problems(_read_state(settings), interval_seconds=settings.interval_seconds)
    line = health_line(problems, len(settings.feed_ids))
    if problems:
        raise click.ClickException(line)
    click.echo(line)
