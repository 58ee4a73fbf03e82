"""The spool pipeline: a scheduler thread and a pool of workers, one file per feed at a time.

The scheduler owns all bookkeeping (pending files per feed, back-off, settle state is the only
thing workers share) and is fed by one queue: paths from watchdog, the start-up scan and the
rescans, and the results of the workers. Within a feed the files go strictly in name order (names
sort by modified time), one import at a time, so an older version never lands after a newer one; a
file waiting for a retry or for a copy to settle holds back the later files of its feed only.

A feed's next file starts as soon as OpenCTI has accepted the previous one: the worker tells the
scheduler (an ``imported`` result) and then moves the file to ``done/`` with its receipt while the
next import runs (issue 6: the durable moves cost about as much as the platform calls). A move that
fails after the import is retried in place, never by importing again, so order is kept; only if
the uploader stops first does the file go back to ``incoming/`` (imported again by the next run,
like any file claimed at a crash).
"""

from __future__ import annotations

import collections
import errno
import heapq
import logging
import os
import queue
import random
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Literal

from watchdog.observers.api import BaseObserver

from shared.errors import DestinationExistsError, SpoolError, UnsafeNameError
from shared.layout import BUNDLE_SUFFIX, INCOMING, Spool, walk_bundle_paths
from shared.signing import SigningKey
from uploader.check import SpoolFile, check_bundle, check_stix, read_spool_file, scan_bundle
from uploader.claim import (
    ClaimLostError,
    InstanceLock,
    claim,
    older_claim_elsewhere,
    reclaim,
    reclaim_instance,
    release_claim,
)
from uploader.discover import start_observer
from uploader.errors import (
    BundleRejected,
    PermanentImportError,
    TransientImportError,
)
from uploader.importer import Importer
from uploader.mover import AnswerKind, MoveJob, Mover
from uploader.outcome import Failure, mark_done, mark_failed
from uploader.settings import UploaderSettings

logger = logging.getLogger(__name__)

# Longest the scheduler sleeps without looking at the stop flag, deadlines and back-offs.
_TICK = 0.25
# Seconds after a new folder appears in incoming/ before it is walked a second time.
_NEW_FOLDER_RESCAN = 0.5
# Seconds between two looks at another uploader importing an older file of the same feed.
_WAIT_FOR_OTHER = 0.5
# Shortest time between two restarts of a watchdog observer that died.
_OBSERVER_RESTART = 10.0


@dataclass(frozen=True)
class PipelineOptions:
    """The pipeline's knobs (from :class:`UploaderSettings` in production)."""

    instance: str
    concurrency: int = 2
    settle_seconds: float = 5.0
    retry_initial: float = 2.0
    retry_max: float = 300.0
    rescan_interval: float = 60.0
    strict_stix: bool = False
    polling: bool = False
    poll_interval: float = 1.0
    #: Masked in every reason file (defence in depth: importers should never echo the token).
    secrets: tuple[str, ...] = field(default=(), repr=False)
    #: With a key, only files signed with it are imported (issue 7); without, none are checked.
    signing_key: SigningKey | None = field(default=None, repr=False)
    #: Move imported files to done/ in a helper process (:mod:`uploader.mover`); off, the
    #: importing threads move them. The command line turns it on (UPLOADER_MOVE_PROCESS).
    move_process: bool = False

    @classmethod
    def from_settings(
        cls, settings: UploaderSettings, instance: str, signing_key: SigningKey | None = None
    ) -> PipelineOptions:
        return cls(
            instance=instance,
            concurrency=settings.concurrency,
            settle_seconds=settings.settle_seconds,
            retry_initial=settings.retry_initial,
            retry_max=settings.retry_max,
            rescan_interval=settings.rescan_interval,
            strict_stix=settings.strict_stix,
            polling=settings.polling,
            poll_interval=settings.poll_interval,
            secrets=(settings.opencti_token.get_secret_value(),),
            signing_key=signing_key,
            move_process=settings.move_process,
        )


@dataclass
class RunSummary:
    """What one run did; ``pending`` files are back in ``incoming/``, ``left`` were not touched."""

    done: int = 0
    failed: int = 0
    reclaimed: int = 0
    pending: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.pending and not self.left


ResultKind = Literal["done", "failed", "retry", "settling", "wait", "gone", "left", "imported"]


@dataclass(frozen=True)
class _Result:
    feed: str
    rel: PurePosixPath
    kind: ResultKind
    delay: float = 0.0
    attempts: int = 0
    #: Walk the feed's folder again (files were put back into incoming/ behind our back).
    rescan: bool = False
    #: The final result of a file whose ``imported`` result already freed its feed.
    released: bool = False


@dataclass(frozen=True)
class _Imported(MoveJob):
    """A file OpenCTI accepted, still in the claim folder until it is moved to done/: the move's
    job (for the mover or :meth:`Pipeline._finish`) and the feed it counts for."""

    feed: str


@dataclass
class _Feed:
    """One feed's pending files: a set, and a heap of the same names for the oldest in O(log n)."""

    pending: set[PurePosixPath] = field(default_factory=set)
    heap: list[PurePosixPath] = field(default_factory=list)
    busy: bool = False
    not_before: float = 0.0

    def add(self, rel: PurePosixPath) -> None:
        if rel not in self.pending:
            self.pending.add(rel)
            heapq.heappush(self.heap, rel)

    def discard(self, rel: PurePosixPath) -> None:
        # Lazy deletion: head() drops names that are no longer pending.
        self.pending.discard(rel)

    def head(self) -> PurePosixPath:
        while self.heap[0] not in self.pending:
            heapq.heappop(self.heap)
        return self.heap[0]


def backoff_delay(attempt: int, initial: float, maximum: float, rand: float) -> float:
    """Exponential back-off with jitter: about ``initial * 2**(attempt-1)``, capped at ``maximum``."""
    base = min(maximum, initial * 2.0 ** min(attempt - 1, 60))
    if base < maximum:
        return min(maximum, base * (1.0 + 0.25 * rand))
    return maximum * (0.8 + 0.2 * rand)


def work_name(feed_id: str, spool_file: SpoolFile) -> str:
    """The OpenCTI work name of a file: says the feed and the report (or feed objects) it holds."""
    modified = spool_file.name.modified.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"CTX {feed_id} {spool_file.name.subject} ({modified})"


class Pipeline:
    """Imports spool files through an :class:`Importer`, one OpenCTI work per file."""

    def __init__(
        self,
        spool: Spool,
        importer: Importer,
        options: PipelineOptions,
        lock: InstanceLock,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if lock.instance != options.instance:
            raise ValueError("the lock and the options name different instances")
        self.spool = spool
        self.importer = importer
        self.options = options
        self.lock = lock
        self.clock = clock
        self.rand = rand
        self.events: queue.SimpleQueue[Path | _Result] = queue.SimpleQueue()
        self._feeds: dict[str, _Feed] = {}
        self._attempts: dict[PurePosixPath, int] = {}
        self._ignored: set[PurePosixPath] = set()
        # rel → ((size, mtime_ns), since when unchanged, SHA-256 read at that size/mtime or "").
        self._settle: dict[PurePosixPath, tuple[tuple[int, int], float, str]] = {}
        self._settle_lock = threading.Lock()
        self._summary = RunSummary()
        self._new_folders: list[tuple[float, Path]] = []
        self._gone = 0
        self._observer: BaseObserver | None = None
        self._observer_started = 0.0
        # Feed folders of incoming/ the start-up scan has not walked yet, walked one per turn of
        # the loop so the first feeds import while the others are still being listed (a spool
        # of 100,000 files took seconds to list before the first push; issue 6). A feed is never
        # dispatched before its folder was walked: its oldest file may not be known yet.
        self._startup: collections.deque[Path] = collections.deque()
        self._unscanned: set[str] = set()
        self._unverified_noted = threading.Event()
        # Files imported whose move to done/ (or failed/) is still running in a worker.
        self._finishing = 0
        # Set when the run is stopping: workers retrying a move after an import give up.
        self._stopping = threading.Event()
        # The helper process that moves imported files to done/ (options.move_process).
        self._mover: Mover | None = None

    def run(
        self, stop: threading.Event, *, watch: bool, max_wait: float | None = None
    ) -> RunSummary:
        """Import until ``stop`` is set (``watch``) or until nothing is left to do (once).

        With ``max_wait`` a run gives up after that many seconds without any file finishing (an
        outage: every import is being retried): the files still pending are left in
        ``incoming/``. A long but healthy run is never cut short. The lock must be held by the
        caller.
        """
        self.spool.ensure()
        self._summary = RunSummary()
        self._stopping.clear()
        self._finishing = 0
        self._summary.reclaimed = reclaim(self.spool, self.lock, own=True)
        if self.options.move_process:
            self._start_mover()
        if watch:
            # Watch first, then scan: a file published in between is seen at least once.
            self._start_observer()
        logger.info(
            "uploader %s started (%s)",
            self.options.instance,
            "watch" if watch else "once",
            extra={"spool": str(self.spool.root), "reclaimed": self._summary.reclaimed},
        )
        try:
            self._queue_startup_scan()
            self._loop(stop, watch=watch, max_wait=max_wait)
        finally:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join(timeout=10)
                self._observer = None
            if self._mover is not None:
                # Every file it was given is answered by now (the loop waits for them), unless
                # the loop ended on an error: it answers those before it exits.
                self._mover.close()
                self._mover = None
            # Anything still claimed goes back to incoming/ for the next run (never lost).
            reclaim(self.spool, self.lock, own=True)
        summary = self._summary
        summary.pending = sorted(str(rel) for feed in self._feeds.values() for rel in feed.pending)
        logger.info(
            "uploader %s stopped: %d done, %d failed, %d pending",
            self.options.instance,
            summary.done,
            summary.failed,
            len(summary.pending),
        )
        return summary

    def _loop(self, stop: threading.Event, *, watch: bool, max_wait: float | None) -> None:
        start = self.clock()
        deadline = None if max_wait is None else start + max_wait
        finished = self._finished_count()
        next_rescan = start + self.options.rescan_interval
        # Imports running (at most ``concurrency``); a worker that finishes a file after its
        # import no longer counts, so the pool has room for as many of those again.
        in_flight = 0
        with ThreadPoolExecutor(
            max_workers=2 * self.options.concurrency, thread_name_prefix="uploader-worker"
        ) as pool:
            while True:
                now = self.clock()
                if watch and now >= next_rescan:
                    self._rescan()
                    next_rescan = now + self.options.rescan_interval
                self._rescan_new_folders(now)
                self._keep_observer_alive(now)
                self._scan_next_startup_folder()
                stopping = stop.is_set() or (deadline is not None and now >= deadline)
                if stopping:
                    self._stopping.set()
                else:
                    in_flight += self._dispatch(pool, self.options.concurrency - in_flight, now)
                if (
                    in_flight == 0
                    and self._finishing == 0
                    and (stopping or (not watch and not self._has_pending() and not self._startup))
                ):
                    return
                timeout = self._next_wakeup(now, next_rescan if watch else None, deadline)
                if self._startup:
                    timeout = 0.0
                try:
                    event = self.events.get(timeout=timeout)
                except queue.Empty:
                    continue
                while True:
                    if isinstance(event, _Result):
                        if event.kind == "imported":
                            in_flight -= 1
                            self._finishing += 1
                        elif event.released:
                            self._finishing -= 1
                        else:
                            in_flight -= 1
                        self._apply(event)
                    else:
                        self._add_path(event)
                    if max_wait is not None and self._finished_count() != finished:
                        finished = self._finished_count()
                        deadline = self.clock() + max_wait
                    try:
                        event = self.events.get_nowait()
                    except queue.Empty:
                        break

    def _queue_startup_scan(self) -> None:
        """List ``incoming/``: files at its top are added now, folders are walked by the loop."""
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
                self._unscanned.add(entry.name)
            elif entry.name.endswith(BUNDLE_SUFFIX):
                self._add(PurePosixPath(entry.name))

    def _scan_next_startup_folder(self) -> None:
        if self._startup:
            folder = self._startup.popleft()
            self._scan(folder)
            self._unscanned.discard(folder.name)

    def _start_observer(self) -> None:
        self._observer = start_observer(
            self.spool.incoming,
            self.events.put,
            polling=self.options.polling,
            poll_interval=self.options.poll_interval,
        )
        self._observer_started = self.clock()

    def _keep_observer_alive(self, now: float) -> None:
        """Restart a dead watchdog thread (inotify limits, a vanished folder), at most every 10 s."""
        if self._observer is None or self._observer.is_alive():
            return
        if now - self._observer_started < _OBSERVER_RESTART:
            return
        logger.error("the file watcher stopped; restarting it and rescanning incoming/")
        try:
            self._start_observer()
        except OSError as exc:
            self._observer_started = now
            logger.error("cannot restart the file watcher: %s", exc.strerror or exc)
        self._scan(self.spool.incoming)

    def _finished_count(self) -> int:
        summary = self._summary
        return summary.done + summary.failed + len(summary.left) + self._gone

    def _rescan_new_folders(self, now: float) -> None:
        due = [folder for when, folder in self._new_folders if when <= now]
        self._new_folders = [(when, folder) for when, folder in self._new_folders if when > now]
        for folder in due:
            self._scan(folder)

    def _next_wakeup(self, now: float, next_rescan: float | None, deadline: float | None) -> float:
        wake = now + _TICK
        for feed in self._feeds.values():
            if feed.pending and not feed.busy and feed.not_before > now:
                wake = min(wake, feed.not_before)
        for moment in (next_rescan, deadline):
            if moment is not None:
                wake = min(wake, moment)
        return max(0.01, wake - now)

    def _has_pending(self) -> bool:
        return any(feed.pending for feed in self._feeds.values())

    def _rescan(self) -> None:
        try:
            self._summary.reclaimed += reclaim(self.spool, self.lock, own=False)
        except (SpoolError, OSError) as exc:
            logger.error("reclaiming stopped uploaders' files failed: %s", exc)
        self._scan(self.spool.incoming)

    def _scan(self, directory: Path) -> None:
        prefix = directory.relative_to(self.spool.incoming).as_posix()
        prefix = "" if prefix == "." else f"{prefix}/"
        try:
            # Strings, one path object per file: the start-up scan of 100,000 files (issue 6).
            for _path, rel, _is_symlink in walk_bundle_paths(directory):
                self._add(PurePosixPath(prefix + rel))
        except OSError as exc:
            # An unreadable folder must not stop the uploader; the next rescan tries again.
            logger.error("cannot scan %s: %s", directory, exc.strerror or exc)

    def _add_path(self, path: Path) -> None:
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
            self._scan(path)
            self._new_folders.append((self.clock() + _NEW_FOLDER_RESCAN, path))
        elif path.name.endswith(".json"):
            self._add(rel)

    def _add(self, rel: PurePosixPath) -> None:
        if rel in self._ignored:
            return
        feed_key = rel.parts[0] if len(rel.parts) > 1 else ""
        self._feeds.setdefault(feed_key, _Feed()).add(rel)

    def _dispatch(self, pool: ThreadPoolExecutor, free: int, now: float) -> int:
        if free <= 0:
            # Every slot busy: most turns of the loop (a move answered, a path seen) end here
            # without looking at every feed (issue 6).
            return 0
        ready = [
            (feed.head(), key)
            for key, feed in self._feeds.items()
            if feed.pending
            and not feed.busy
            and feed.not_before <= now
            and key not in self._unscanned
        ]
        started = 0
        for head, key in sorted(ready)[: max(0, free)]:
            feed = self._feeds[key]
            feed.busy = True
            attempts = self._attempts.get(head, 0)
            future = pool.submit(self._process_safely, key, head, attempts)
            future.add_done_callback(self._forward(key, head, attempts))
            started += 1
        return started

    def _forward(
        self, key: str, rel: PurePosixPath, attempts: int
    ) -> Callable[[Future[_Result | None]], None]:
        def done(future: Future[_Result | None]) -> None:
            exc = future.exception()
            if exc is None:
                result = future.result()
                if result is not None:  # None: the mover answers for the file later
                    self.events.put(result)
            else:
                # _process_safely catches everything; this is a last resort so the feed never
                # stays busy forever.
                logger.error("worker crashed on %s: %r", rel, exc, extra={"file": str(rel)})
                delay = self._retry_delay(attempts + 1)
                self.events.put(_Result(key, rel, "retry", delay, attempts + 1))

        return done

    def _apply(self, result: _Result) -> None:
        feed = self._feeds[result.feed]
        rel = result.rel
        if result.released:
            # The feed went on at ``imported``; only the count is left (or, if the move after the
            # import gave up at stop, the file is pending again: it goes back to incoming/).
            self._count(result, feed)
            return
        feed.busy = False
        if result.kind == "imported":
            feed.discard(rel)
            feed.not_before = 0.0
            self._attempts.pop(rel, None)
            return
        if result.rescan and len(rel.parts) > 1:
            self._scan(self.spool.incoming / rel.parts[0])
        if result.kind in ("retry", "settling", "wait"):
            self._attempts[rel] = result.attempts
            feed.not_before = self.clock() + result.delay
            return
        feed.discard(rel)
        feed.not_before = 0.0
        self._attempts.pop(rel, None)
        with self._settle_lock:
            self._settle.pop(rel, None)
        self._count(result, feed)

    def _count(self, result: _Result, feed: _Feed) -> None:
        rel = result.rel
        if result.kind == "retry":
            feed.add(rel)
        elif result.kind == "gone":
            self._gone += 1
        elif result.kind == "done":
            self._summary.done += 1
        elif result.kind == "failed":
            self._summary.failed += 1
        elif result.kind == "left":
            self._ignored.add(rel)
            self._summary.left.append(str(rel))

    def _retry_delay(self, attempts: int) -> float:
        return backoff_delay(
            attempts, self.options.retry_initial, self.options.retry_max, self.rand()
        )

    def _process_safely(self, feed: str, rel: PurePosixPath, attempts: int) -> _Result | None:
        try:
            return self._process(feed, rel, attempts)
        except Exception:
            # Whatever went wrong (disk full, a bug), the file is not the culprit: put it back
            # and retry later; the process keeps running.
            attempts += 1
            delay = self._retry_delay(attempts)
            logger.exception(
                "unexpected error on %s, retrying in %.1fs",
                rel,
                delay,
                extra={"feed": feed, "file": str(rel)},
            )
            self._release_if_claimed(rel)
            return _Result(feed, rel, "retry", delay, attempts)

    def _release_if_claimed(self, rel: PurePosixPath) -> None:
        claimed = self.lock.directory / Path(*rel.parts)
        if claimed.exists() or claimed.is_symlink():
            try:
                release_claim(self.spool, claimed, rel)
            except (SpoolError, OSError) as exc:
                logger.error("cannot put %s back: %s", rel, exc, extra={"file": str(rel)})

    def _process(self, feed: str, rel: PurePosixPath, attempts: int) -> _Result | None:
        """Import one file; None when the mover process moves it (its answer comes later)."""
        ctx = {"feed": feed, "file": str(rel)}
        try:
            src = self.spool.path_in(INCOMING, rel)
        except UnsafeNameError as exc:
            logger.error("left in incoming/: %s", exc, extra=ctx)
            return _Result(feed, rel, "left")
        if self._under_symlinked_folder(rel):
            logger.error("left in incoming/: inside a symlinked folder (never followed)", extra=ctx)
            return _Result(feed, rel, "left")
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return _Result(feed, rel, "gone")
        if stat.S_ISLNK(st.st_mode):
            return self._claim_and_fail(
                feed, rel, Failure("symlink", "symbolic links are never followed")
            )
        if not stat.S_ISREG(st.st_mode):
            logger.error("left in incoming/: not a regular file", extra=ctx)
            return _Result(feed, rel, "left")
        blocked = self._older_claim_elsewhere(feed, rel, attempts)
        if blocked is not None:
            return blocked
        wait = self._settling_without_reading(rel, st)
        if wait is not None:
            return _Result(feed, rel, "settling", wait, attempts)
        try:
            spool_file = read_spool_file(src, rel)
        except FileNotFoundError:
            return _Result(feed, rel, "gone")
        except BundleRejected as exc:
            return self._claim_and_fail(feed, rel, Failure(exc.kind, str(exc)))
        if not spool_file.digest_ok:
            return self._settle_or_fail(feed, rel, spool_file, attempts)
        with self._settle_lock:
            self._settle.pop(rel, None)
        # Only now that the bytes match the SHA-256 in the name (a copy in progress has settled)
        # is the signature checked: a mismatch then is final.
        refusal = self._signature_refusal(feed, rel, spool_file, attempts)
        if refusal is not None:
            return self._claim_and_fail(feed, rel, refusal)

        try:
            claimed = claim(self.spool, self.options.instance, rel)
        except ClaimLostError:
            return _Result(feed, rel, "gone")
        after = os.lstat(claimed)
        if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) != (
            *spool_file.inode,
            spool_file.size,
            spool_file.mtime_ns,
        ):
            # Replaced or written to between our read and our rename: read it again.
            release_claim(self.spool, claimed, rel)
            return _Result(feed, rel, "settling", 0.05, attempts)

        try:
            if self.options.strict_stix:
                check_stix(check_bundle(spool_file.data))
            else:
                # One object at a time for big files: the parsed bundle is never held (issue 6).
                scan_bundle(spool_file.data)
        except BundleRejected as exc:
            return self._fail(feed, claimed, rel, Failure(exc.kind, str(exc), attempts))

        attempts += 1
        name = work_name(spool_file.feed_id, spool_file)
        try:
            receipt = self.importer.import_bundle(name, spool_file.data)
        except TransientImportError as exc:
            release_claim(self.spool, claimed, rel)
            delay = self._retry_delay(attempts)
            logger.warning(
                "import of %s failed (attempt %d), retrying in %.1fs: %s",
                rel.name,
                attempts,
                delay,
                exc,
                extra={**ctx, "work_id": exc.work_id, "error": type(exc).__name__},
            )
            return _Result(feed, rel, "retry", delay, attempts)
        except PermanentImportError as exc:
            return self._fail(
                feed,
                claimed,
                rel,
                Failure("rejected", str(exc), attempts, work_id=exc.work_id),
            )
        # OpenCTI has the file: the feed's next file may start (module docstring). Queued before
        # the file goes to the mover, so its answer never comes before this.
        self.events.put(_Result(feed, rel, "imported", attempts=attempts))
        imported = _Imported(
            claimed=claimed,
            rel=rel,
            receipt=receipt,
            sha256=spool_file.actual_sha256,
            attempts=attempts,
            feed=feed,
        )
        if self._mover is not None and self._mover.send(imported):
            return None
        return self._finish(imported)

    def _start_mover(self) -> None:
        try:
            self._mover = Mover(self.spool.root, self.options.instance, self._moved)
        except (OSError, ValueError, TypeError) as exc:
            # No interpreter to start (an embedded Python), no process left (EAGAIN), no memory.
            logger.warning(
                "cannot start the mover process (%s); imported files are moved by the uploader "
                "itself",
                getattr(exc, "strerror", None) or exc,
            )
            self._mover = None

    def _moved(self, imported: MoveJob, kind: AnswerKind, message: str) -> None:
        """The mover's answer for an imported file (called from the mover's reader thread)."""
        assert isinstance(imported, _Imported)  # the only jobs this pipeline sends
        if kind == "done":
            self._log_imported(imported)
            self.events.put(
                _Result(
                    imported.feed, imported.rel, "done", attempts=imported.attempts, released=True
                )
            )
            return
        if kind == "error":
            logger.warning(
                "the mover could not move %s (%s); the uploader tries itself",
                imported.rel.name,
                message,
                extra={"feed": imported.feed, "file": str(imported.rel)},
            )
        # A conflict is refused by _record_done again (done/ still holds different bytes); an
        # error or a mover that died is retried here, never imported again. In a thread of its
        # own: this is the reader of every other answer.
        threading.Thread(
            target=self._finish_here,
            args=(imported, kind == "lost"),
            name="uploader-finish",
            daemon=True,
        ).start()

    def _finish_here(self, imported: _Imported, maybe_moved: bool) -> None:
        self.events.put(self._finish(imported, maybe_moved=maybe_moved))

    def _finish(self, imported: _Imported, *, maybe_moved: bool = False) -> _Result:
        """Move an imported file to done/ (or failed/ on a conflict), retrying until it works.

        Never raises and never imports again: a newer file of the feed may be importing already.
        ``maybe_moved``: an earlier attempt (a mover that died) may have moved it already.
        """
        feed, rel, attempts = imported.feed, imported.rel, imported.attempts
        ctx = {"feed": feed, "file": str(rel), "work_id": imported.receipt.work_id}
        tries = 0
        while True:
            if (tries or maybe_moved) and not os.path.lexists(imported.claimed):
                # An earlier try moved it and failed on a later step (a stale reason's removal).
                return _Result(feed, rel, "done", attempts=attempts, released=True)
            try:
                return replace(self._record_done(imported), released=True)
            except Exception as exc:  # noqa: BLE001 - disk full, EIO: the file is not at fault
                tries += 1
                delay = self._retry_delay(tries)
                logger.error(
                    "imported %s, but recording it failed (%s); trying again in %.1fs",
                    rel.name,
                    exc,
                    delay,
                    extra=ctx,
                )
                if self._stopping.wait(delay):
                    logger.error(
                        "stopping before %s could be moved to done/: it goes back to incoming/ "
                        "and the next run imports it again",
                        rel.name,
                        extra=ctx,
                    )
                    return _Result(feed, rel, "retry", attempts=attempts, released=True)

    def _record_done(self, imported: _Imported) -> _Result:
        feed, claimed, rel, attempts = (
            imported.feed,
            imported.claimed,
            imported.rel,
            imported.attempts,
        )
        try:
            mark_done(
                self.spool,
                claimed,
                rel,
                imported.receipt,
                instance=self.options.instance,
                sha256=imported.sha256,
                attempts=attempts,
            )
        except DestinationExistsError as exc:
            return self._fail(
                feed,
                claimed,
                rel,
                Failure("conflict", f"done/ already holds different bytes: {exc}", attempts),
            )
        self._log_imported(imported)
        return _Result(feed, rel, "done", attempts=attempts)

    @staticmethod
    def _log_imported(imported: _Imported) -> None:
        logger.info(
            "imported %s",
            imported.rel.name,
            extra={
                "feed": imported.feed,
                "file": str(imported.rel),
                "work_id": imported.receipt.work_id,
                "objects": imported.receipt.objects,
            },
        )

    def _signature_refusal(
        self, feed: str, rel: PurePosixPath, spool_file: SpoolFile, attempts: int
    ) -> Failure | None:
        """Why a complete file's signature is refused (``unsigned``, ``bad-signature``), or None."""
        key = self.options.signing_key
        signature = spool_file.name.signature
        if key is None:
            if signature is not None and not self._unverified_noted.is_set():
                self._unverified_noted.set()
                logger.info(
                    "signed files seen but no SPOOL_SIGNING_KEY is set: signatures are not "
                    "being verified",
                    extra={"feed": feed, "file": str(rel)},
                )
            return None
        if signature is None:
            return Failure("unsigned", "the name carries no signature and a key is set", attempts)
        if not key.verify(spool_file.data, signature):
            return Failure(
                "bad-signature",
                "the signature in the name is not the HMAC of the bytes under our key "
                "(another key, or altered bytes and name)",
                attempts,
            )
        return None

    def _older_claim_elsewhere(
        self, feed: str, rel: PurePosixPath, attempts: int
    ) -> _Result | None:
        """Wait while another uploader imports an older file of this feed (order across uploaders)."""
        blocker = older_claim_elsewhere(self.spool, rel, self.options.instance)
        if blocker is None:
            return None
        holder, older = blocker
        if reclaim_instance(self.spool, holder) is not None:
            # It had died: its files are back in incoming/, the older one goes first.
            return _Result(feed, rel, "wait", 0.0, attempts, rescan=True)
        logger.debug(
            "waiting for uploader %s to finish the older %s",
            holder,
            older.name,
            extra={"feed": feed, "file": str(rel)},
        )
        return _Result(feed, rel, "wait", _WAIT_FOR_OTHER, attempts)

    def _under_symlinked_folder(self, rel: PurePosixPath) -> bool:
        """True if a folder between ``incoming/`` and the file is a symlink (or not a folder)."""
        folder = self.spool.incoming
        for part in rel.parts[:-1]:
            folder = folder / part
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    return True
            except FileNotFoundError:
                return False
        return False

    def _settling_without_reading(self, rel: PurePosixPath, st: os.stat_result) -> float | None:
        """For a file already seen with a wrong digest: how long to wait before reading it again.

        Re-reading (and hashing) a large file every second while it is being copied is wasted
        work: while its size or mtime still change, or while they have not changed but the
        settle time is not up yet, a stat is enough. None: read it now.
        """
        now = self.clock()
        signature = (st.st_size, st.st_mtime_ns)
        with self._settle_lock:
            previous = self._settle.get(rel)
            if previous is None:
                return None
            if previous[0] != signature:
                self._settle[rel] = (signature, now, "")
                return min(0.2, max(0.05, self.options.settle_seconds))
            waited = now - previous[1]
            if previous[2] and waited < self.options.settle_seconds:
                return min(1.0, max(0.05, self.options.settle_seconds - waited))
        return None

    def _settle_or_fail(
        self, feed: str, rel: PurePosixPath, spool_file: SpoolFile, attempts: int
    ) -> _Result:
        """A digest mismatch: a copy in progress until the file stops changing, then corrupt."""
        now = self.clock()
        signature = (spool_file.size, spool_file.mtime_ns)
        with self._settle_lock:
            previous = self._settle.get(rel)
            since = now if previous is None or previous[0] != signature else previous[1]
            self._settle[rel] = (signature, since, spool_file.actual_sha256)
        waited = now - since
        if waited >= self.options.settle_seconds:
            return self._claim_and_fail(
                feed,
                rel,
                Failure(
                    "corrupt",
                    f"SHA-256 does not match the name after {waited:.1f}s without change",
                    attempts,
                    expected_sha256=spool_file.name.sha256,
                    actual_sha256=spool_file.actual_sha256,
                ),
            )
        if previous is None:
            logger.info(
                "digest of %s does not match its name yet; waiting for it to settle",
                rel.name,
                extra={"feed": feed, "file": str(rel)},
            )
        delay = min(1.0, max(0.05, self.options.settle_seconds - waited))
        return _Result(feed, rel, "settling", delay, attempts)

    def _claim_and_fail(self, feed: str, rel: PurePosixPath, failure: Failure) -> _Result:
        try:
            claimed = claim(self.spool, self.options.instance, rel)
        except ClaimLostError:
            return _Result(feed, rel, "gone")
        return self._fail(feed, claimed, rel, failure)

    def _fail(self, feed: str, claimed: Path, rel: PurePosixPath, failure: Failure) -> _Result:
        message = failure.message
        for secret in self.options.secrets:
            if secret:
                message = message.replace(secret, "***")
        failure = replace(failure, message=message)
        ctx = {"feed": feed, "file": str(rel), "kind": failure.kind}
        try:
            mark_failed(self.spool, claimed, rel, failure, instance=self.options.instance)
        except DestinationExistsError:
            logger.error(
                "cannot fail %s: failed/ already holds different bytes; left in incoming/",
                rel.name,
                extra=ctx,
            )
            release_claim(self.spool, claimed, rel)
            return _Result(feed, rel, "left")
        except SpoolError as exc:
            cause = exc.__cause__
            if not (isinstance(cause, OSError) and cause.errno == errno.ENAMETOOLONG):
                raise
            # A name near the 255-byte limit leaves no room for ``.reason`` (and its temp name):
            # retrying could never succeed (issue 5), so the file stays where it is, refused.
            logger.error(
                "refused %s: %s; the name is too long for a reason file, left in incoming/",
                rel.name,
                failure.message,
                extra=ctx,
            )
            release_claim(self.spool, claimed, rel)
            return _Result(feed, rel, "left")
        logger.error("refused %s: %s", rel.name, failure.message, extra=ctx)
        return _Result(feed, rel, "failed", attempts=failure.attempts)
