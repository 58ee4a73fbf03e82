"""Where spool files are built: in worker processes, or in the fetcher's own process.

Building a report's file (reading its closure from the mirror, JSON, hashing, staging and
publishing it) is mostly Python work, held by one interpreter lock. In threads of the fetcher's
own process it took turns with the thread that records the files and with each other, and the
machine's other cores stayed idle; in processes the cores share it (docs/performance.md).

* The processes come from a :class:`concurrent.futures.ProcessPoolExecutor` with the
  ``forkserver`` start method
  (https://docs.python.org/3/library/multiprocessing.html#contexts-and-start-methods): forking the
  fetcher itself, which runs threads (HTTP, metrics), can leave a child stuck on a lock another
  thread held (Python 3.12 warns about it). The fork server is a fresh interpreter that imports
  this module and what it needs, no HTTP stack, so a worker starts in milliseconds. It stays
  until the fetcher exits; the workers live for one pass.
* Each worker reads the mirror through its own read-only connection (SQLite WAL readers,
  https://sqlite.org/wal.html#concurrency), opened at its first task.
* A worker ends when the fetcher ends, even if the fetcher was killed outright
  (:func:`_exit_with`).
* Workers ignore SIGINT: a Ctrl-C in a terminal reaches every process of its group, and it is the
  fetcher that decides how a pass stops (what has not started is cancelled, the files being
  written are finished: they are complete and content-addressed, and recorded by the next pass).
* An error raised in a worker comes back as it is (fetcher and spool errors pickle whole:
  :func:`shared.errors.restore_error`); a worker that dies (killed, out of memory) fails the
  feed it was writing for with a :class:`FetcherError` (what it did not write stays pending),
  and the next feed gets new workers.
* With ``CYBERTHREATEXCHANGE_CONCURRENCY=1`` no process is started: files are built one after
  another in the fetcher's own process, through its own connection.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

from fetcher.errors import FetcherError
from fetcher.files.writer import Built, FileWriter
from fetcher.state.ledger import Ledger

#: Worker processes at most (fewer when CONCURRENCY is lower). More than the cores of a small
#: machine on purpose: a worker waiting for an fsync leaves its core to another.
MAX_PROCESSES = 4

_T = TypeVar("_T")


class Workers:
    """Runs :class:`FileWriter` calls in ``processes`` worker processes, or inline if 0."""

    def __init__(self, ledger: Ledger, *, processes: int) -> None:
        # Inline, files are read through the fetcher's own connection.
        self._ledger = ledger
        self._processes = processes
        self._pool = self._new_pool() if processes > 0 else None
        self._starting: threading.Thread | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        try:
            return ProcessPoolExecutor(
                self._processes,
                mp_context=context,
                initializer=_start_worker,
                initargs=(str(self._ledger.path.parent), os.getpid()),
            )
        except OSError as exc:
            # Its queues need POSIX semaphores (/dev/shm); CONCURRENCY=1 needs none.
            raise FetcherError(
                f"cannot prepare processes to write files: {exc} "
                "(CYBERTHREATEXCHANGE_CONCURRENCY=1 writes them without)"
            ) from None

    @classmethod
    def for_concurrency(cls, ledger: Ledger, concurrency: int) -> Workers:
        """Workers for CYBERTHREATEXCHANGE_CONCURRENCY: up to :data:`MAX_PROCESSES`, none for 1."""
        processes = 0 if concurrency <= 1 else min(concurrency, MAX_PROCESSES)
        return cls(ledger, processes=processes)

    def start(self) -> None:
        """Start the first worker (and the fork server) in the background; returns at once.

        The first process costs about a tenth of a second (a fresh interpreter importing this
        module); started when the pass starts, while the fetcher mostly waits for the network,
        it is ready when files are due.
        """
        if self._pool is not None and self._starting is None:
            self._starting = threading.Thread(
                target=self._start_one, name="ctx-workers-start", daemon=True
            )
            self._starting.start()

    def _start_one(self) -> None:
        assert self._pool is not None
        # Only a head start: if no process can be started, the first real task says so.
        with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: BrokenExecutor too
            self._pool.submit(_ready)

    def reports(self, writer: FileWriter, ids: list[str]) -> Future[list[Built]]:
        if self._pool is None:
            return _now(writer.reports, self._ledger, ids)
        return self._submit(_reports, writer, ids)

    def objects(self, writer: FileWriter, ids: list[str]) -> Future[list[Built]]:
        if self._pool is None:
            return _now(writer.objects, self._ledger, ids)
        return self._submit(_objects, writer, ids)

    def _submit(self, task: Callable[..., _T], *args: object) -> Future[_T]:
        assert self._pool is not None
        try:
            try:
                return self._pool.submit(task, *args)
            except BrokenExecutor:
                # A worker died (killed, out of memory): the feed it wrote for has failed
                # (outcome()); what comes next gets new workers.
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                return self._pool.submit(task, *args)
        except (BrokenExecutor, OSError) as exc:
            # No process can be started (limits, memory).
            raise FetcherError(f"cannot run a process to write files: {exc}") from None

    def close(self) -> None:
        """Cancel what has not started and wait for the rest."""
        if self._starting is not None:
            # Joined first: the pool is not shut down under its submit.
            self._starting.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def outcome(future: Future[_T], feed_id: str) -> _T:
    """The future's result; a worker that died becomes a :class:`FetcherError` of the feed."""
    try:
        return future.result()
    except BrokenExecutor as exc:
        raise FetcherError(
            f"a process writing the feed's files ended unexpectedly ({exc}); the files it did "
            "not write are written by the next pass",
            feed_id=feed_id,
        ) from None


def _now(call: Callable[..., _T], *args: object) -> Future[_T]:
    """A future already done with ``call(*args)``: the same interface without a process."""
    future: Future[_T] = Future()
    try:
        future.set_result(call(*args))
    except Exception as exc:  # noqa: BLE001 - raised by result(), as a pool does
        future.set_exception(exc)
    return future


# In each worker process --------------------------------------------------------------------------

_state_dir: Path | None = None
_reader: Ledger | None = None


def _start_worker(state_dir: str, fetcher_pid: int) -> None:
    global _state_dir
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _state_dir = Path(state_dir)
    threading.Thread(
        target=_exit_with, args=(fetcher_pid,), name="ctx-worker-watch", daemon=True
    ).start()


def _exit_with(pid: int) -> None:
    """End this worker when the fetcher ends.

    A fetcher killed outright (``kill -9``, the OOM killer) cannot shut its pool down, and its
    workers would wait for tasks forever: the pipe they read is held open by their siblings, and
    the fork server, which would exit with the fetcher, keeps running while they hold its own.
    A pidfd (Linux 5.3+, https://man7.org/linux/man-pages/man2/pidfd_open.2.html) becomes
    readable when the process ends; without one, the fetcher is looked for every second.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except OSError:
        while _alive(pid):
            time.sleep(1.0)
        os._exit(1)
    select.select([fd], [], [])
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ready() -> None:
    """A task that does nothing: submitting it starts a worker."""


def _open_reader() -> Ledger:
    global _reader
    if _reader is None:
        assert _state_dir is not None, "_start_worker runs first"
        _reader = Ledger(_state_dir, read_only=True)
    return _reader


def _reports(writer: FileWriter, ids: list[str]) -> list[Built]:
    return writer.reports(_open_reader(), ids)


def _objects(writer: FileWriter, ids: list[str]) -> list[Built]:
    return writer.objects(_open_reader(), ids)
