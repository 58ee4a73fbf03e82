"""``ctx-fetcher``: CTX feeds into the spool (``once``, ``run``, ``feeds``, ``transfer``), the
commands that read or reset the fetcher's state (``state``, ``health``, ``reset``) and ``audit``
(:mod:`fetcher.cli_audit`)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import click

from fetcher.cli_audit import audit_command
from fetcher.client import CTXClient
from fetcher.errors import FetcherError, LedgerError
from fetcher.lock import StateLock
from fetcher.metrics import RequestMetrics
from fetcher.pass_metrics import PassMetrics
from fetcher.pass_result import FeedResult
from fetcher.reset import parse_since, reset_feed
from fetcher.settings import FetcherSettings, ScheduleSettings, SpoolStateSettings
from fetcher.state import Ledger
from fetcher.status import (
    FeedState,
    health_line,
    health_problems,
    open_state,
    read_state,
    render_table,
)
from fetcher.sync import run_pass
from fetcher.transfer import manifest, mark, open_transfer_state, transfer_set
from shared.cli import config_option, stop_on_signals
from shared.config import load_settings, warn_unknown_settings
from shared.console import terminal_console
from shared.durable import write_atomic
from shared.errors import ConfigError, SharedError, SpoolError, UnsafeNameError
from shared.layout import Spool, check_feed_id
from shared.logsetup import configure_logging
from shared.metrics import serve_metrics
from shared.signing import SigningKey

logger = logging.getLogger(__name__)


def _settings(config_path: Path | None) -> FetcherSettings:
    return _settings_and_key(config_path)[0]


def _settings_and_key(config_path: Path | None) -> tuple[FetcherSettings, SigningKey | None]:
    try:
        settings = load_settings(FetcherSettings, config_path)
        key = settings.load_signing_key()
    except (ConfigError, SharedError) as exc:
        raise click.ClickException(str(exc)) from None
    secrets = [settings.api_key.get_secret_value()]
    if key is not None and key.mask_text is not None:
        secrets.append(key.mask_text)
    configure_logging(settings.log_level, secrets=secrets, json_lines=settings.json_logging)
    warn_unknown_settings(settings)
    return settings, key


@dataclass(frozen=True)
class _Metrics:
    """The process's metrics: the client's requests and the passes', on one registry."""

    requests: RequestMetrics
    passes: PassMetrics


def _metrics(settings: FetcherSettings) -> _Metrics:
    """The process's metrics, served over HTTP when CONNECTOR_EXPOSE_METRICS is on."""
    requests = RequestMetrics()
    metrics = _Metrics(requests, PassMetrics(requests.registry))
    try:
        serve_metrics(settings, requests.registry)
    except SharedError as exc:
        raise click.ClickException(str(exc)) from None
    return metrics


_LoadedT = TypeVar("_LoadedT", bound=SpoolStateSettings)


def _load(model: type[_LoadedT], config_path: Path | None) -> _LoadedT:
    """Settings that hold no secret of their own (the signing key is not loaded)."""
    try:
        settings = load_settings(model, config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, json_lines=settings.json_logging)
    warn_unknown_settings(settings)
    return settings


@contextmanager
def _state_lock(settings: SpoolStateSettings) -> Iterator[None]:
    try:
        with StateLock(settings.effective_state_dir):
            yield
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None


def _one_pass(
    settings: FetcherSettings,
    key: SigningKey | None,
    stop: threading.Event | None = None,
    metrics: _Metrics | None = None,
) -> list[FeedResult]:
    console = terminal_console()
    display = None
    if console is not None:
        # Imported only for a terminal: rich is a tenth of the start-up of every pass otherwise.
        from fetcher.progress import PassProgress

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctx-opencti-spool", prog_name="ctx-fetcher")
def main() -> None:
    """Fetch Cyber Threat Exchange feeds into the spool, one STIX bundle file per report."""


@main.command()
@config_option
def once(config_path: Path | None) -> None:
    """One pass over every configured feed; exit 0 only if every feed succeeded."""
    settings, key = _settings_and_key(config_path)
    with _state_lock(settings):
        results = _one_pass(settings, key, metrics=_metrics(settings))
    failed = [r.feed_id for r in results if not r.ok]
    if failed:
        # Each feed's error is in the log above; this line only says which failed.
        raise click.ClickException(
            f"{len(failed)} of {len(results)} feed(s) failed: {', '.join(failed)}"
        )


@main.command()
@config_option
@click.option("--max-passes", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--interval-seconds", type=click.FloatRange(min=0), default=None, hidden=True)
def run(config_path: Path | None, max_passes: int | None, interval_seconds: float | None) -> None:
    """A pass now, then one every CONNECTOR_DURATION_PERIOD (or INTERVAL_HOURS), until stopped."""
    settings, key = _settings_and_key(config_path)
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
    with _state_lock(settings), stop_on_signals(stop, "stopping after the current feed"):
        # After the lock: a second fetcher is refused for what it is, not for a taken port.
        metrics = _metrics(settings)
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


@main.command()
@config_option
def feeds(config_path: Path | None) -> None:
    """The team's subscribed feeds with their status, marking which are configured."""
    settings = _settings(config_path)
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


@main.command()
@config_option
@click.option("--all", "include_all", is_flag=True, help="List every file, even those marked.")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a `sha256sum -c` manifest of exactly the listed files (published atomically).",
)
@click.option("--mark", "mark_listed", is_flag=True, help="Record the listed files as transferred.")
@click.option("-0", "--null", "null", is_flag=True, help="End each path with NUL, not newline.")
def transfer(
    config_path: Path | None,
    include_all: bool,
    manifest_path: Path | None,
    mark_listed: bool,
    null: bool,
) -> None:
    """List the files in incoming/ not yet marked as transferred, relative to SPOOL_DIR.

    The list feeds `rsync --files-from=- SPOOL_DIR DEST` or `tar -C SPOOL_DIR -T -` (with -0: their
    --from0/--null options). Nothing is marked unless --mark is given, and only after the list and
    the manifest are written. No network: only the spool and the fetcher's state are used.
    """
    settings = _load(SpoolStateSettings, config_path)
    spool = Spool(settings.spool_dir)
    try:
        with open_transfer_state(settings.spool_dir, settings.effective_state_dir) as ledger:
            paths = transfer_set(spool, ledger, include_all=include_all)
            if manifest_path is not None:
                write_atomic(manifest_path, manifest(spool, paths))
            end = "\0" if null else "\n"
            click.echo("".join(f"{path}{end}" for path in paths), nl=False)
            if mark_listed:
                marked = mark(ledger, paths)
                logger.info("marked %d file(s) as transferred", marked)
    except (FetcherError, SpoolError) as exc:
        raise click.ClickException(str(exc)) from None


def _read_state(settings: ScheduleSettings) -> list[FeedState]:
    try:
        with open_state(settings.spool_dir, settings.effective_state_dir) as ledger:
            return read_state(ledger, settings.feed_ids)
    except (FetcherError, SpoolError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of the table.")
def state(config_path: Path | None, as_json: bool) -> None:
    """Where each feed stands: cursor, last pass, files written, reports waiting for objects they
    name or written without some, last error. Read-only."""
    settings = _load(ScheduleSettings, config_path)
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


@main.command()
@config_option
def health(config_path: Path | None) -> None:
    """Exit 0 when the last pass of every configured feed went well and is recent.

    Non-zero, with one line saying why, when a feed's last pass failed, ended more than twice the
    interval ago, or never finished. Reads the state only: no lock, no network (a HEALTHCHECK).
    """
    settings = _load(ScheduleSettings, config_path)
    problems = health_problems(_read_state(settings), interval_seconds=settings.interval_seconds)
    line = health_line(problems, len(settings.feed_ids))
    if problems:
        raise click.ClickException(line)
    click.echo(line)


@main.command()
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
    settings = _load(SpoolStateSettings, config_path)
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
        # The cursor never moves forward (fetcher.reset): a date after it re-reads nothing.
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


main.add_command(audit_command(_settings))
