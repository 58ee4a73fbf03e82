"""Finding spool files: the watchdog observer, the start-up scan and the rescans, into one queue.

Everything that notices a file in ``incoming/`` ends as one call of ``add(rel)`` on the pipeline's
loop thread. Watchdog's handler only enqueues paths (:mod:`uploader.intake.discover`); the loop hands each
to :meth:`Intake.path_seen`, which filters it. The start-up scan lists ``incoming/`` at once and
walks one feed folder per turn of the loop, so the first feeds import while the others are still
being listed; a feed is never dispatched before its folder was walked (:attr:`Intake.unscanned`).
A periodic rescan (also with inotify: it misses changes made by other hosts on a network
filesystem and drops events when its queue overflows, inotify(7)) first puts back the files of
uploaders that died, then walks ``incoming/`` again.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from watchdog.observers.api import BaseObserver

from shared.errors import SpoolError
from shared.layout import BUNDLE_SUFFIX, Spool, walk_bundle_paths
from uploader.intake.discover import start_observer
from uploader.spool_ops.claim import InstanceLock, reclaim

logger = logging.getLogger(__name__)

# Seconds after a new folder appears in incoming/ before it is walked a second time.
_NEW_FOLDER_RESCAN = 0.5
# Shortest time between two restarts of a watchdog observer that died.
OBSERVER_RESTART = 10.0


class Intake:
    """Feeds ``add(rel)`` with every bundle file seen in ``incoming/`` (repeats are harmless)."""

    def __init__(
        self,
        spool: Spool,
        lock: InstanceLock,
        add: Callable[[PurePosixPath], None],
        clock: Callable[[], float],
        *,
        polling: bool,
        poll_interval: float,
    ) -> None:
        self.spool = spool
        self.lock = lock
        self.add = add
        self.clock = clock
        self.polling = polling
        self.poll_interval = poll_interval
        #: Files put back into incoming/ from dead uploaders' claim folders by rescans.
        self.reclaimed = 0
        #: Feed folders of incoming/ the start-up scan has not walked yet.
        self.unscanned: set[str] = set()
        self._startup: collections.deque[Path] = collections.deque()
        self._new_folders: list[tuple[float, Path]] = []
        self._observer: BaseObserver | None = None
        self._observer_started = 0.0
        self._put: Callable[[Path], None] | None = None

    @property
    def scanning(self) -> bool:
        """True while the start-up scan still has folders to walk."""
        return bool(self._startup)

    def watch(self, put: Callable[[Path], None]) -> None:
        """Start the watchdog observer; it hands every path it sees to ``put`` (a queue)."""
        self._put = put
        self._start_observer()

    @property
    def watcher_alive(self) -> bool | None:
        """Whether the watchdog observer runs; None when not watching (``once``)."""
        if self._put is None:
            return None
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def start_scan(self) -> None:
        """List ``incoming/``: files at its top are added now, folders are walked by :meth:`turn`."""
        incoming = self.spool.incoming
        try:
            with os.scandir(incoming) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            logger.error("cannot scan %s: %s", incoming, exc.strerror or exc)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                self._startup.append(Path(entry.path))
                self.unscanned.add(entry.name)
            elif entry.name.endswith(BUNDLE_SUFFIX):
                self.add(PurePosixPath(entry.name))

    def turn(self, now: float) -> None:
        """One turn of the loop: due folder walks, the watcher's health, one start-up folder."""
        due = [folder for when, folder in self._new_folders if when <= now]
        self._new_folders = [(when, folder) for when, folder in self._new_folders if when > now]
        for folder in due:
            self.scan(folder)
        self._keep_observer_alive(now)
        if self._startup:
            folder = self._startup.popleft()
            self.scan(folder)
            self.unscanned.discard(folder.name)

    def rescan(self) -> None:
        """Put back dead uploaders' claimed files, then walk all of ``incoming/``."""
        try:
            self.reclaimed += reclaim(self.spool, self.lock, own=False)
        except (SpoolError, OSError) as exc:
            logger.error("reclaiming stopped uploaders' files failed: %s", exc)
        self.scan(self.spool.incoming)

    def scan(self, directory: Path) -> None:
        prefix = directory.relative_to(self.spool.incoming).as_posix()
        prefix = "" if prefix == "." else f"{prefix}/"
        try:
            # Strings, one path object per file: the start-up scan of 100,000 files.
            for _path, rel, _is_symlink in walk_bundle_paths(directory):
                self.add(PurePosixPath(prefix + rel))
        except OSError as exc:
            # An unreadable folder must not stop the uploader; the next rescan tries again.
            logger.error("cannot scan %s: %s", directory, exc.strerror or exc)

    def scan_feed(self, feed_folder: PurePosixPath) -> None:
        self.scan(self.spool.incoming / feed_folder)

    def path_seen(self, path: Path) -> None:
        """A path from the watcher: a bundle file is added, a new folder walked (twice)."""
        try:
            rel = PurePosixPath(path.relative_to(self.spool.incoming).as_posix())
        except ValueError:
            return
        if not rel.parts or any(part.startswith(".") for part in rel.parts):
            return
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            # A folder moved in whole (or created before its watch was set): walk it now, and
            # once more shortly, for files that land in it before inotify watches it.
            self.scan(path)
            self._new_folders.append((self.clock() + _NEW_FOLDER_RESCAN, path))
        elif path.name.endswith(".json"):
            self.add(rel)

    def _start_observer(self) -> None:
        assert self._put is not None
        self._observer = start_observer(
            self.spool.incoming,
            self._put,
            polling=self.polling,
            poll_interval=self.poll_interval,
        )
        self._observer_started = self.clock()

    def _keep_observer_alive(self, now: float) -> None:
        """Restart a dead watchdog thread (inotify limits, a vanished folder), at most every 10 s."""
        if self._observer is None or self._observer.is_alive():
            return
        if now - self._observer_started < OBSERVER_RESTART:
            return
        logger.error("the file watcher stopped; restarting it and rescanning incoming/")
        try:
            self._start_observer()
        except OSError as exc:
            self._observer_started = now
            logger.error("cannot restart the file watcher: %s", exc.strerror or exc)
        self.scan(self.spool.incoming)
