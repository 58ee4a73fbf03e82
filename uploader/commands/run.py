"""``ctx-uploader once`` and ``watch``: one run of the pipeline, with everything around it.

Settings loaded once, the instance lock, the metrics endpoint, the importer (pycti's, imported only
here and by ``check``), the heartbeat, the progress display of ``once``, the drop folder of
``watch``; a :class:`PlatformConfigError` stops the run with one line and its exit status.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shared.cli import stop_on_signals
from shared.console import terminal_console
from shared.errors import SharedError
from shared.layout import Spool
from shared.metrics import serve_metrics
from uploader.adoption.adopt import Adopter
from uploader.adoption.drop_folder import DropFolder
from uploader.adoption.ledger import AdoptLedger
from uploader.commands.loading import EXIT_PENDING, uploader_settings_and_key
from uploader.errors import PlatformAuthError, PlatformConfigError, UploaderError
from uploader.importing.chunking import Bundle
from uploader.importing.importer import Importer
from uploader.intake.scheduler import Result
from uploader.ops.health import Heartbeat, record_stop
from uploader.ops.metrics import UploaderMetrics
from uploader.ops.progress import RunProgress
from uploader.pipeline import Pipeline, RunSummary
from uploader.settings import AdoptSettings, UploaderSettings
from uploader.spool_ops.claim import InstanceLock, default_instance_id
from uploader.spool_ops.origin import Origin
from uploader.spool_ops.outcome import ImportReceipt

if TYPE_CHECKING:
    from uploader.importing.opencti import PyctiImporter

ImporterFactory = Callable[[UploaderSettings], Importer]

logger = logging.getLogger(__name__)


def pycti_importer_class() -> type[PyctiImporter]:
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
    return pycti_importer_class()(settings, metrics=metrics)


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


def run(
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
                    display = RunProgress(console, pipeline.scheduler)
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


def new_adopter(settings: AdoptSettings, spool: Spool, *, keep: bool) -> Adopter:
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
        new_adopter(settings, spool, keep=settings.adopt_keep),
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


def echo_summary(summary: RunSummary) -> None:
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
