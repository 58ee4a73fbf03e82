"""``ctx-fetcher once``, ``run`` and ``feeds``: passes over the configured feeds, and the feeds the
team can fetch."""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from pathlib import Path

import click

from fetcher.commands.loading import (
    Metrics,
    fetcher_metrics,
    fetcher_settings,
    settings_and_key,
    state_lock,
)
from fetcher.ctx.client import CTXClient
from fetcher.errors import FetcherError
from fetcher.passes.result import FeedResult
from fetcher.passes.run import run_pass
from fetcher.settings import FetcherSettings
from fetcher.state.ledger import Ledger
from shared.cli import config_option, stop_on_signals
from shared.console import terminal_console
from shared.errors import SpoolError
from shared.layout import Spool
from shared.signing import SigningKey

logger = logging.getLogger(__name__)


def _one_pass(
    settings: FetcherSettings,
    key: SigningKey | None,
    stop: threading.Event | None = None,
    metrics: Metrics | None = None,
) -> list[FeedResult]:
    console = terminal_console()
    display = None
    if console is not None:
        # Imported only for a terminal: rich is a tenth of the start-up of every pass otherwise.
        from fetcher.commands.progress import PassProgress

        display = PassProgress(console)
    spool = Spool(settings.spool_dir)
    try:
        with (
            display.live() if display is not None else nullcontext(None) as progress,
            Ledger(settings.effective_state_dir) as ledger,
            CTXClient(settings, None if metrics is None else metrics.requests) as client,
        ):
            results = run_pass(
                client,
                ledger,
                spool,
                settings.feed_ids,
                concurrency=settings.concurrency,
                progress=progress,
                stop=stop,
                signing_key=key,
                overlap=settings.overlap,
                report_grace=settings.report_grace,
                metrics=None if metrics is None else metrics.passes,
            )
    except (FetcherError, SpoolError) as exc:
        # A failure outside any one feed (the state, the client, the spool): said here, once.
        logger.error("pass failed: %s", exc)
        results = [FeedResult(feed_id, error=exc) for feed_id in settings.feed_ids]
    for result in results:
        click.echo(f"{result.feed_id}: {result.summary()}")
    return results


@click.command()
@config_option
def once(config_path: Path | None) -> None:
    """One pass over every configured feed; exit 0 only if every feed succeeded."""
    settings, key = settings_and_key(config_path)
    with state_lock(settings):
        results = _one_pass(settings, key, metrics=fetcher_metrics(settings))
    failed = [r.feed_id for r in results if not r.ok]
    if failed:
        # Each feed's error is in the log above; this line only says which failed.
        raise click.ClickException(
            f"{len(failed)} of {len(results)} feed(s) failed: {', '.join(failed)}"
        )


@click.command()
@config_option
@click.option("--max-passes", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--interval-seconds", type=click.FloatRange(min=0), default=None, hidden=True)
def run(config_path: Path | None, max_passes: int | None, interval_seconds: float | None) -> None:
    """A pass now, then one every CONNECTOR_DURATION_PERIOD (or INTERVAL_HOURS), until stopped."""
    settings, key = settings_and_key(config_path)
    interval = interval_seconds if interval_seconds is not None else settings.interval_seconds
    if settings.both_intervals_set:
        logger.warning(
            "CONNECTOR_DURATION_PERIOD and CYBERTHREATEXCHANGE_INTERVAL_HOURS are both set; "
            "CONNECTOR_DURATION_PERIOD wins"
        )
    logger.info(
        "writing to the spool %s (state in %s)",
        settings.spool_dir.absolute(),
        settings.effective_state_dir.absolute(),
    )
    logger.info(
        "a pass every %s s (%s)",
        f"{interval:g}",
        settings.interval_source if interval_seconds is None else "--interval-seconds",
    )
    stop = threading.Event()
    passes = 0
    with state_lock(settings), stop_on_signals(stop, "stopping after the current feed"):
        # After the lock: a second fetcher is refused for what it is, not for a taken port.
        metrics = fetcher_metrics(settings)
        while not stop.is_set():
            try:
                results = _one_pass(settings, key, stop, metrics)
                failed = sum(1 for r in results if not r.ok)
                if failed:
                    logger.error("pass finished with %d failed feed(s)", failed)
            except Exception:
                # ``run`` is a long-lived service: one bad pass must not end it.
                logger.exception("pass crashed; trying again at the next interval")
            passes += 1
            if max_passes is not None and passes >= max_passes:
                break
            stop.wait(interval)
    logger.info("stopped after %d pass(es)", passes)


@click.command()
@config_option
def feeds(config_path: Path | None) -> None:
    """The team's subscribed feeds with their status, marking which are configured."""
    settings = fetcher_settings(config_path)
    try:
        with CTXClient(settings) as client:
            subscriptions = client.subscriptions()
    except FetcherError as exc:
        raise click.ClickException(str(exc)) from None
    configured = set(settings.feed_ids)
    rows = [("FEED ID", "NAME", "STATUS", "CONFIGURED")]
    for sub in subscriptions:
        rows.append(
            (sub.feed_id, sub.name, sub.status, "yes" if sub.feed_id in configured else "no")
        )
    known = {sub.feed_id for sub in subscriptions}
    for feed_id in settings.feed_ids:
        if feed_id not in known:
            rows.append((feed_id, "-", "not subscribed", "yes"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
