"""``ctx-fetcher``: CTX feeds into the spool (``once``, ``run``, ``feeds``, ``transfer``)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

from fetcher.client import CTXClient
from fetcher.errors import FetcherError
from fetcher.metrics import FetcherMetrics
from fetcher.settings import FetcherSettings, SpoolStateSettings
from fetcher.state import Ledger
from fetcher.sync import FeedResult, run_pass
from fetcher.transfer import manifest, mark, transfer_set
from shared.config import load_settings
from shared.durable import write_atomic
from shared.errors import ConfigError, SharedError, SpoolError
from shared.layout import Spool
from shared.logsetup import configure_logging
from shared.metrics import serve_metrics
from shared.signing import SigningKey

logger = logging.getLogger(__name__)

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="config.yml to read (default ./config.yml if present). Environment variables win.",
)


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
    return settings, key


def _metrics(settings: FetcherSettings) -> FetcherMetrics:
    """The process's metrics, served over HTTP when CONNECTOR_EXPOSE_METRICS is on."""
    metrics = FetcherMetrics()
    try:
        serve_metrics(settings, metrics.registry)
    except SharedError as exc:
        raise click.ClickException(str(exc)) from None
    return metrics


def _stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def _progress() -> Callable[[FeedResult], None] | None:
    if not _stdout_is_tty():
        return None
    current: list[str] = []

    def show(result: FeedResult) -> None:
        if current and current[-1] != result.feed_id:
            click.echo("")
        current[:] = [result.feed_id]
        click.echo(
            f"\r{result.feed_id}: records {result.records_listed}, "
            f"reports {result.reports_written} new, "
            f"{result.reports_unchanged} unchanged, objects files {result.objects_files_written}",
            nl=False,
        )

    return show


def _one_pass(
    settings: FetcherSettings,
    key: SigningKey | None,
    stop: threading.Event | None = None,
    metrics: FetcherMetrics | None = None,
) -> list[FeedResult]:
    progress = _progress()
    spool = Spool(settings.spool_dir)
    try:
        with Ledger(settings.effective_state_dir) as ledger, CTXClient(settings, metrics) as client:
            results = run_pass(
                client,
                ledger,
                spool,
                settings.feed_ids,
                concurrency=settings.concurrency,
                progress=progress,
                stop=stop,
                signing_key=key,
            )
    except (FetcherError, SpoolError) as exc:
        results = [FeedResult(feed_id, error=exc) for feed_id in settings.feed_ids]
    if progress is not None:
        click.echo("")
    for result in results:
        click.echo(f"{result.feed_id}: {result.summary()}")
    return results


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fetch Cyber Threat Exchange feeds into the spool, one STIX bundle file per report."""


@main.command()
@config_option
def once(config_path: Path | None) -> None:
    """One pass over every configured feed; exit 0 only if every feed succeeded."""
    settings, key = _settings_and_key(config_path)
    failed = [r for r in _one_pass(settings, key, metrics=_metrics(settings)) if not r.ok]
    if failed:
        raise click.ClickException("\n".join(f"feed {r.feed_id} failed: {r.error}" for r in failed))


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %s received; stopping after the current feed", signum)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@main.command()
@config_option
@click.option("--max-passes", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--interval-seconds", type=click.FloatRange(min=0), default=None, hidden=True)
def run(config_path: Path | None, max_passes: int | None, interval_seconds: float | None) -> None:
    """A pass now, then one every CYBERTHREATEXCHANGE_INTERVAL_HOURS, until SIGTERM/SIGINT."""
    settings, key = _settings_and_key(config_path)
    interval = interval_seconds if interval_seconds is not None else settings.interval_hours * 3600
    stop = threading.Event()
    metrics = _metrics(settings)
    passes = 0
    with _stop_on_signals(stop):
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
    try:
        settings = load_settings(SpoolStateSettings, config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, json_lines=settings.json_logging)
    spool = Spool(settings.spool_dir)
    try:
        with Ledger(settings.effective_state_dir) as ledger:
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
