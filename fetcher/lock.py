"""One fetcher at a time per state directory: an exclusive ``flock`` on ``<state>/fetcher.lock``.

``once`` and ``run`` hold it for as long as they run (``run`` between passes too), ``reset`` while
it changes the state; a second one is refused at once rather than left waiting. The kernel drops
the lock when its holder dies, even by ``kill -9`` (flock(2)), so a crash never leaves it stale.
``state``, ``health`` and ``transfer`` read (or only add transfer marks) and do not take it.
The holder's pid is written into the file for the refusal message; the lock is the flock, not
the file's content or existence.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from fetcher.errors import LedgerError, StateBusyError

LOCK_NAME = "fetcher.lock"


class StateLock:
    """The exclusive lock of one fetcher state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StateBusyError`; creates the state directory."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LedgerError(
                f"cannot open the state lock: {exc.strerror or exc}", path=self.path
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StateBusyError(
                f"another ctx-fetcher{f' (pid {holder})' if holder else ''} is using the state "
                f"in {self.path.parent.absolute()}; stop it first (its lock {self.path.name} is held)",
                path=self.path,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # Closing the descriptor drops the flock.
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
    return ""
