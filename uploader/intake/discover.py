"""Finding new spool files: watchdog events on ``incoming/`` feed a queue, nothing more.

The handler only enqueues paths: watchdog calls every handler in turn on the observer's one
thread (``BaseObserver.dispatch_events`` in ``watchdog/observers/api.py``), so work done there
would hold back every later event. The pipeline's scheduler filters and schedules them.
A start-up scan and periodic full rescans feed the same queue: inotify does not see changes made
by other hosts on a network filesystem and loses events when its queue overflows (inotify(7),
"Limitations and caveats", ``IN_Q_OVERFLOW``), and watchdog's README ("About using watchdog with
CIFS") asks for ``PollingObserver`` on such shares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

logger = logging.getLogger(__name__)


def _text(path: bytes | str) -> str:
    return path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path


class EnqueueHandler(FileSystemEventHandler):
    """Hands the path of every created, moved-in or closed file (or new folder) to ``put``."""

    def __init__(self, put: Callable[[Path], None]) -> None:
        self.put = put

    def on_created(self, event: DirCreatedEvent | FileCreatedEvent) -> None:
        self.put(Path(_text(event.src_path)))

    def on_moved(self, event: DirMovedEvent | FileMovedEvent) -> None:
        self.put(Path(_text(event.dest_path)))

    def on_closed(self, event: FileClosedEvent) -> None:
        self.put(Path(_text(event.src_path)))


def start_observer(
    incoming: Path, put: Callable[[Path], None], *, polling: bool, poll_interval: float
) -> BaseObserver:
    """Start a recursive watch of ``incoming`` (inotify, or polling for network filesystems)."""
    observer: BaseObserver = PollingObserver(timeout=poll_interval) if polling else Observer()
    observer.schedule(EnqueueHandler(put), str(incoming), recursive=True)
    observer.daemon = True
    observer.start()
    logger.info(
        "watching %s (%s)",
        incoming,
        "polling" if polling else "inotify",
        extra={"dir": str(incoming)},
    )
    return observer
