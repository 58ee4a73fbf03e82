"""``ctx-uploader``: the uploader's command line.

Settings are loaded once per command and passed down, and logging is configured from them
(:mod:`uploader.commands.loading`); errors become :class:`click.ClickException` in the command line
only. ``status``, ``verify``, ``replay`` and ``prune`` (:mod:`uploader.commands.spool`) load only
:class:`SpoolSettings` and never import pycti.

Exit codes of ``once``: 0 all imported, 1 some file failed, 3 files still pending (transient
errors outlasted ``--max-wait``) or left untouched. A platform that refuses what the uploader is
set up with (:class:`uploader.errors.PlatformConfigError`) stops ``once`` and ``watch`` at once,
with one line naming what to change: 1 (:data:`EXIT_CONFIG`, as for invalid settings) for a pycti
newer than the platform, 3 for a refused ``OPENCTI_TOKEN`` (every file is left pending).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shared.cli import config_option, stop_on_signals
from shared.console import terminal_console
from shared.errors import SharedError
from shared.layout import Spool
from shared.metrics import serve_metrics
from uploader.adoption.adopt import Adopter, adopt_folder
from uploader.adoption.drop_folder import DropFolder
from uploader.adoption.ledger import AdoptLedger
from uploader.commands.loading import (
    EXIT_FAILED,
    existing_spool,
    settings_and_key,
    uploader_settings_and_key,
)
from uploader.commands.spool import SPOOL_COMMANDS
from uploader.errors import PlatformAuthError, PlatformConfigError, UploaderError
from uploader.importing.chunking import Bundle
from uploader.importing.importer import Importer
from uploader.importing.refusals import installed_pycti
from uploader.intake.scheduler import Result
from uploader.ops.health import Heartbeat, health_line, health_problems, record_stop
from uploader.ops.metrics import UploaderMetrics
from uploader.ops.progress import RunProgress
from uploader.pipeline import Pipeline, RunSummary
from uploader.settings import AdoptSettings, HealthSettings, UploaderSettings
from uploader.spool_ops.claim import InstanceLock, default_instance_id
from uploader.spool_ops.origin import Origin
from uploader.spool_ops.outcome import ImportReceipt

if TYPE_CHECKING:
    from uploader.importing.opencti import PyctiImporter

ImporterFactory = Callable[[UploaderSettings], Importer]

logger = logging.getLogger(__name__)

EXIT_PENDING = 3
#: What click exits with for a ClickException: invalid settings, and a pycti the platform refuses.
EXIT_CONFIG = click.ClickException.exit_code


def _pycti_importer_class() -> type[PyctiImporter]:
    # Imported here so that status/verify/replay work without pycti installed.
    try:
        from uploader.importing.opencti import PyctiImporter
    except ImportError as exc:
        raise click.ClickException(
            f"cannot load pycti ({exc}); install the uploader with its 'opencti' extra "
            "and a pycti version matching your platform"
        ) from None
    return PyctiImporter


def _pycti_importer(settings: UploaderSettings, metrics: UploaderMetrics | None = None) -> Importer:
    return _pycti_importer_class()(settings, metrics=metrics)


class _StopOnConfigError:
    """The pipeline's importer: passes each import on, and at the first
    :class:`PlatformConfigError` sets ``stop`` (no retry can help) and keeps it for the exit line."""

    def __init__(self, importer: Importer, stop: threading.Event) -> None:
        self._importer = importer
        self._stop = stop
        self._lock = threading.Lock()
        self.error: PlatformConfigError | None = None

    def import_bundle(
        self, work_name: str, bundle: Bundle, origin: Origin | None = None
    ) -> ImportReceipt:
        try:
            if origin is None:
                return self._importer.import_bundle(work_name, bundle)
            return self._importer.import_bundle(work_name, bundle, origin)
        except PlatformConfigError as exc:
            with self._lock:
                if self.error is None:
                    self.error = exc
            self._stop.set()
            raise


class _PendingError(click.ClickException):
    """One line, and the exit status that says files were left pending."""

    exit_code = EXIT_PENDING


def _config_exit(exc: PlatformConfigError) -> click.ClickException:
    """The one line that ends the command; a refused token leaves every file pending (exit 3)."""
    if isinstance(exc, PlatformAuthError):
        return _PendingError(str(exc))
    return click.ClickException(str(exc))


def _connect_at_start(importer: Importer) -> None:
    """Register before the first file (the real importer has ``connect``; test fakes need not).

    A :class:`PlatformConfigError` ends the command; a platform that is down or starting only
    delays the files, which are retried as any transient failure.
    """
    connect = getattr(importer, "connect", None)
    if not callable(connect):
        return
    try:
        connect()
    except PlatformConfigError:
        raise
    except UploaderError as exc:
        logger.warning("OpenCTI is not ready yet, files will be retried: %s", exc)


def _run(
    ctx: click.Context, config_path: Path | None, *, watch: bool, max_wait: float | None
) -> RunSummary:
    settings, key = uploader_settings_and_key(config_path)
    # watchdog's inotify thread warns when a folder is created while it is adding watches for its
    # parent; the second watch just replaces the first (and the periodic rescan backs it up).
    warnings.filterwarnings(
        "ignore", message=r"Callback with id .* already exists", category=RuntimeWarning
    )
    obj: dict[str, Any] = ctx.ensure_object(dict)
    stop: threading.Event = obj.get("stop") or threading.Event()
    spool = Spool(settings.spool_dir)
    metrics = UploaderMetrics(spool)
    factory: ImporterFactory = obj.get(
        "importer_factory", lambda s: _pycti_importer(s, metrics=metrics)
    )
    instance = settings.instance_id or default_instance_id()
    endpoint = None
    try:
        spool.ensure()
        with (
            InstanceLock(spool, instance) as lock,
            stop_on_signals(stop, "stopping after the files in flight"),
        ):
            endpoint = serve_metrics(settings, metrics.registry)
            importer = factory(settings)
            try:
                _connect_at_start(importer)
                guard = _StopOnConfigError(importer, stop)
                pipeline = Pipeline(
                    spool, guard, settings, lock, signing_key=key, on_result=metrics.result
                )
                heartbeat = Heartbeat(
                    spool,
                    instance,
                    mode="watch" if watch else "once",
                    max_silence=settings.health_max_silence,
                    importer=importer,
                    watcher_alive=lambda: pipeline.intake.watcher_alive,
                )
                console = None if watch else obj.get("console", terminal_console())
                display = None
                if console is not None:
                    display = RunProgress(console, pipeline.scheduler.pending_count)
                    pipeline.on_result = _each(metrics.result, display.update)
                drop = _drop_folder(settings, spool) if watch else None
                with (
                    heartbeat,
                    display.live() if display is not None else nullcontext(),
                    drop if drop is not None else nullcontext(),
                ):
                    summary = pipeline.run(stop, watch=watch, max_wait=max_wait)
                if guard.error is not None:
                    raise guard.error
                return summary
            finally:
                # PyctiImporter.close() stops its ping thread (never unregisters the connector).
                close = getattr(importer, "close", None)
                if callable(close):
                    close()
    except PlatformConfigError as exc:
        record_stop(spool, instance, mode="watch" if watch else "once", reason=str(exc))
        raise _config_exit(exc) from None
    except (UploaderError, SharedError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if endpoint is not None:
            endpoint.close()


def _adopter(settings: AdoptSettings, spool: Spool, *, keep: bool) -> Adopter:
    spool.ensure()
    return Adopter(
        spool,
        AdoptLedger(spool.adopt_state),
        feed_id=settings.adopt_feed_id,
        settle_seconds=settings.settle_seconds,
        keep=keep,
    )


def _drop_folder(settings: UploaderSettings, spool: Spool) -> DropFolder | None:
    """The drop folder ``watch`` adopts from (``UPLOADER_DROP_DIR``), None when not set."""
    if settings.drop_dir is None:
        return None
    return DropFolder(
        _adopter(settings, spool, keep=settings.adopt_keep),
        settings.drop_dir,
        polling=settings.polling,
        poll_interval=settings.poll_interval,
        rescan_interval=settings.rescan_interval,
    )


def _each(*targets: Callable[[Result], None]) -> Callable[[Result], None]:
    def tell(result: Result) -> None:
        for target in targets:
            target(result)

    return tell


def _echo_summary(summary: RunSummary) -> None:
    click.echo(
        f"done {summary.done}, failed {summary.failed}, pending {len(summary.pending)}, "
        f"left {len(summary.left)}, reclaimed {summary.reclaimed}"
    )
    if summary.pending:
        # One line however many (an outage leaves hundreds): per feed, and the oldest file,
        # by the modified time that starts every file name.
        per_feed = Counter(rel.partition("/")[0] for rel in summary.pending)
        feeds = ", ".join(f"{feed} {count}" for feed, count in sorted(per_feed.items()))
        oldest = min(summary.pending, key=lambda rel: rel.rpartition("/")[2])
        click.echo(f"pending per feed: {feeds}; oldest incoming/{oldest}")
    for rel in summary.left:
        click.echo(f"left untouched: incoming/{rel}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctx-opencti-spool", prog_name="ctx-uploader")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Import the CTX spool into OpenCTI: incoming/ → done/ or failed/."""
    ctx.ensure_object(dict)


@main.command()
@config_option
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Give up after this many seconds without any file finishing (the platform is down or "
    "refusing our token: every import is being retried); those files stay pending in incoming/.",
)
@click.pass_context
def once(ctx: click.Context, config_path: Path | None, max_wait: float) -> None:
    """Import everything in incoming/ (and reclaimed files), then exit.

    Exit 0 if every file was imported, 1 if some failed, 3 if some are still pending.
    """
    summary = _run(ctx, config_path, watch=False, max_wait=max_wait)
    _echo_summary(summary)
    if summary.failed:
        ctx.exit(EXIT_FAILED)
    if summary.pending or summary.left:
        ctx.exit(EXIT_PENDING)


@main.command()
@config_option
@click.pass_context
def watch(ctx: click.Context, config_path: Path | None) -> None:
    """Import files as they arrive, until SIGTERM or SIGINT (then finish the current files)."""
    summary = _run(ctx, config_path, watch=True, max_wait=None)
    _echo_summary(summary)


@main.command()
@config_option
@click.option(
    "--keep",
    is_flag=True,
    help="Leave every source file where it is (the ledger in SPOOL_DIR/.adopt/ still adopts "
    "each content once).",
)
@click.argument(
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
def adopt(config_path: Path | None, keep: bool, directory: Path) -> None:
    """Publish foreign files of DIRECTORY into the spool's incoming/: pycti diode files (into
    their source connector's feed folder) and plain STIX 2.1 bundles (UPLOADER_ADOPT_FEED_ID).

    Each source file is removed once its spool copy is durable (not with --keep, nor from a
    read-only folder); a file that is not JSON or not a bundle is copied to failed/ with a reason
    and left in place. Files being written are waited for. No network: `once` or `watch` import
    what was adopted. Exit 1 if some file was refused or still being written.
    """
    settings = settings_and_key(config_path, AdoptSettings)[0]
    spool = Spool(settings.spool_dir)
    try:
        adopter = _adopter(settings, spool, keep=keep or settings.adopt_keep)
    except (UploaderError, SharedError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        summary = adopt_folder(
            adopter, directory, patience=settings.settle_seconds + 5.0, sleep=time.sleep
        )
    except (UploaderError, SharedError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        adopter.ledger.close()
    waiting = summary.waiting or []
    for path in waiting:
        click.echo(f"still being written: {path}")
    click.echo(
        f"adopted {summary.adopted}, already adopted {summary.duplicate}, "
        f"refused {summary.failed}, still being written {len(waiting)}"
    )
    if summary.failed or waiting:
        raise click.exceptions.Exit(EXIT_FAILED)


@main.command("check")
@config_option
def check_platform(config_path: Path | None) -> None:
    """Check that OpenCTI takes this uploader: versions, token, connector registration.

    Reads the platform's version, compares it with the installed pycti's and registers the
    connector, as ``once`` and ``watch`` do at start; prints both versions. Exit 1 with one line
    saying what to change when pycti is newer than the platform, OPENCTI_TOKEN is refused or its
    user lacks the CONNECTORAPI capability, or the platform cannot be reached.
    """
    settings = uploader_settings_and_key(config_path)[0]
    importer = _pycti_importer_class()(settings)
    try:
        importer.connect()
    except UploaderError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        importer.close()
    platform = importer.platform_version
    verdict = "match" if platform else "work together (the platform did not say its version)"
    click.echo(
        f"OpenCTI {platform or '(version unknown)'} at {settings.opencti_url} and pycti "
        f"{installed_pycti()} {verdict}; connector {settings.connector_id} registered"
    )


@main.command()
@config_option
def health(config_path: Path | None) -> None:
    """Exit 0 when the uploader of this spool and instance is running and well.

    Non-zero, with one line saying why, when OpenCTI has not answered it for longer than
    UPLOADER_HEALTH_MAX_SILENCE, its file watcher is dead, the process is gone or stuck (its
    heartbeat in processing/<instance>/.health.json is stale), or the oldest pending file is older
    than UPLOADER_HEALTH_MAX_PENDING_AGE. Reads the spool only: no network, no lock (a HEALTHCHECK).
    """
    settings = settings_and_key(config_path, HealthSettings)[0]
    spool = existing_spool(settings)
    problems = health_problems(
        spool,
        settings.instance_id or default_instance_id(),
        max_silence=settings.health_max_silence,
        max_pending_age=settings.health_max_pending_age,
    )
    line = health_line(problems)
    if problems:
        raise click.ClickException(line)
    click.echo(line)


for _command in SPOOL_COMMANDS:
    main.add_command(_command)
