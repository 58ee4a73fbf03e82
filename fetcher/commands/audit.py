"""``ctx-fetcher audit``: the command line of :mod:`fetcher.commands.audit_feed`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from fetcher.commands.audit_feed import AuditProgress, FeedAudit, audit_feed
from fetcher.commands.loading import fetcher_settings
from fetcher.ctx.client import CTXClient
from fetcher.errors import FetcherError
from fetcher.state.ledger import open_state
from shared.cli import config_option
from shared.console import live_progress, showing, terminal_console
from shared.errors import SpoolError, UnsafeNameError
from shared.layout import check_feed_id

#: Exit status when an audited feed is not complete (click's own: 1 an error, 2 a usage error).
INCOMPLETE = 3
#: Ids the text output lists per kind and feed (``--json`` lists them all).
SHOWN = 20


@click.command()
@config_option
@click.option(
    "--feed", "feed_id", default=None, metavar="UUID", help="Audit only this configured feed."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@click.pass_context
def audit(ctx: click.Context, config_path: Path | None, feed_id: str | None, as_json: bool) -> None:
    """Prove the spool is complete: re-read each feed from its start and check that a file
    carries the newest version of every object, and every object a written report names.

    Exit 0 when every audited feed is complete, 3 when an object or a report's member is in
    no file (listed), 1 on an error. Reads the fetcher's state only (no lock), so it runs beside
    `ctx-fetcher run`; it reads the whole listing of each feed from CTX.
    """
    settings = fetcher_settings(config_path)
    feeds = settings.feed_ids
    if feed_id is not None:
        try:
            feed_id = check_feed_id(feed_id.strip())
        except UnsafeNameError as exc:
            raise click.BadParameter(str(exc), param_hint="--feed") from None
        if feed_id not in feeds:
            raise click.ClickException(
                f"feed {feed_id} is not configured (CYBERTHREATEXCHANGE_FEED_IDS: "
                f"{', '.join(feeds)})"
            )
        feeds = (feed_id,)
    results: list[FeedAudit] = []
    try:
        with (
            open_state(settings.spool_dir, settings.effective_state_dir) as state,
            CTXClient(settings) as client,
            _display(sys.stdout.isatty()) as (progress, echo),
        ):
            for feed in feeds:
                result = audit_feed(client, state, feed, progress=progress)
                results.append(result)
                if not as_json:
                    echo(_text(result))
    except (FetcherError, SpoolError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        complete = all(r.complete for r in results)
        document = {"complete": complete, "feeds": [r.as_dict() for r in results]}
        click.echo(json.dumps(document, indent=2))
    if not all(r.complete for r in results):
        ctx.exit(INCOMPLETE)


def _text(result: FeedAudit) -> str:
    """The summary line of a feed, then what it lacks (at most :data:`SHOWN` lines a kind)."""
    lines = [result.summary()]
    lines += _capped([f"  in no file: {i}" for i in result.not_in_files])
    lines += _capped(
        [f"  {r} is in a file without: {', '.join(m)}" for r, m in result.lacking.items()]
    )
    lines += _capped(
        [
            f"  (information) {r} names objects the listing does not hold: {', '.join(m)}"
            for r, m in result.not_listed.items()
        ]
    )
    return "\n".join(lines)


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= SHOWN:
        return lines
    return [*lines[:SHOWN], f"  … and {len(lines) - SHOWN} more (--json lists them all)"]


@contextmanager
def _display(wanted: bool) -> Iterator[tuple[AuditProgress | None, Callable[[str], None]]]:
    """Records read per feed, live on a terminal, and how to print a line: above the display
    while it shows (log lines too), else to stdout."""
    console = terminal_console() if wanted else None
    if console is None:
        yield None, click.echo
        return
    # Imported only for a terminal, as fetcher.commands.progress is.
    from rich.progress import TaskID

    display = live_progress(console)
    tasks: dict[str, TaskID] = {}

    def update(feed_id: str, records: int) -> None:
        if feed_id not in tasks:
            # Feeds are audited one after another, and a finished one has its summary line.
            for task in tasks.values():
                display.remove_task(task)
            tasks.clear()
            tasks[feed_id] = display.add_task(feed_id, total=None, detail="")
        display.update(tasks[feed_id], detail=f"records read {records}")

    def echo(text: str) -> None:
        # click.echo would write to stdout's buffer, under the display's redirection: the line
        # would land in the middle of the display.
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    with showing(display):
        yield update, echo
