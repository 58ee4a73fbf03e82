"""The drop folder (``UPLOADER_DROP_DIR``): foreign files adopted as they arrive, in ``watch``.

The watchdog handler only enqueues paths (:mod:`uploader.intake.discover`); one thread pulls them and
adopts each (:mod:`uploader.adoption.adopt`), and a start-up scan and a periodic rescan feed the same
queue. A file still being copied is looked at again shortly; a published spool file is then found
by the pipeline's own watch of ``incoming/``, so nothing here talks to the pipeline.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from watchdog.observers.api import BaseObserver

from uploader.adoption.adopt import Adopter, walk_drop
from uploader.adoption.plan import source_order
from uploader.intake.discover import start_observer

logger = logging.getLogger(__name__)

# Seconds between two looks at a file that was still being written.
_RETRY = 0.25
# Seconds without a new event that end a batch of files arriving together, and the longest a
# batch gathers (a long copy is adopted while it runs).
_GATHER = 0.1
_GATHER_MAX = 1.0


class DropFolder:
    """Watches ``directory`` and adopts what lands in it, until :meth:`stop`."""

    def __init__(
        self,
        adopter: Adopter,
        directory: Path,
        *,
        polling: bool,
        poll_interval: float,
        rescan_interval: float,
    ) -> None:
        self.adopter = adopter
        self.directory = directory
        self.polling = polling
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._thread = threading.Thread(target=self._run, name="uploader-adopt", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Watch first, then scan: a file dropped in between is seen at least once.
        self._observer = start_observer(
            self.directory, self._queue.put, polling=self.polling, poll_interval=self.poll_interval
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> DropFolder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        waiting: dict[Path, float] = {}
        next_rescan = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_rescan:
                for path in walk_drop(self.directory):
                    self._queue.put(path)
                next_rescan = now + self.rescan_interval
            for path in [p for p, when in waiting.items() if when <= now]:
                del waiting[path]
                self._queue.put(path)
            wake = min([next_rescan, *waiting.values()]) - now
            try:
                item = self._queue.get(timeout=max(0.01, min(wake, 1.0)))
            except queue.Empty:
                continue
            batch = self._batch(item)
            if batch is None:
                return
            for path in batch:
                try:
                    result = self.adopter.adopt(path)
                except Exception:
                    # Disk full, a bug: the file stays where it is and is tried again later.
                    logger.exception("adopting %s failed; trying again later", path)
                    waiting[path] = time.monotonic() + self.rescan_interval
                    continue
                if result.outcome == "waiting":
                    waiting.setdefault(path, time.monotonic() + _RETRY)

    def _batch(self, first: Path | None) -> list[Path] | None:
        """``first`` and what arrives with it, by source time; None when stopping.

        Files copied together (``cp *``, ``rsync``, ``tar x``) are published in the order of the
        epoch in their names, so that a feed's newer file is never in ``incoming/`` (and taken)
        before an older one of the same copy.
        """
        items: set[Path] = set()
        item = first
        until = time.monotonic() + _GATHER_MAX
        while True:
            if item is None:
                return None
            if item.is_dir():
                # A folder moved or unpacked in (tar): its files may predate its watch.
                items.update(walk_drop(item))
            else:
                items.add(item)
            left = until - time.monotonic()
            if left <= 0:
                return sorted(items, key=source_order)
            try:
                item = self._queue.get(timeout=min(_GATHER, left))
            except queue.Empty:
                return sorted(items, key=source_order)
