"""An exclusive ``flock`` on one file: the one lock both halves use.

The fetcher holds one per state directory, each uploader instance one on its claim folder. The
kernel drops a flock when its holder dies, even by ``kill -9`` (flock(2)), so a crash never leaves
it stale; the holder's pid is written into the file for a refusal message, but the lock is the
flock, not the file's content or existence.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

#: How often a waiting :meth:`FileLock.acquire` tries again.
_RETRY_SECONDS = 0.05


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._holder = ""

    def acquire(self, wait: float = 0.0, *, create: bool = True) -> bool:
        """Take the lock, trying for up to ``wait`` seconds: False if another process holds it.

        Raises ``OSError`` when the file cannot be opened (``FileNotFoundError`` if it is missing
        and ``create`` is false). ``O_NOFOLLOW``: a symlink planted in its place is refused.
        """
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        fd = os.open(self.path, flags, 0o644)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self._holder = _read_pid(fd)
                        os.close(fd)
                        return False
                    time.sleep(_RETRY_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        # The pid is only for a refusal message: a full disk must not stop the lock being held.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """The pid the holder wrote, read when :meth:`acquire` last found the lock busy ("" if
        it wrote none)."""
        return self._holder

    def release(self) -> None:
        if self._fd is not None:
            # Closing the descriptor drops the flock.
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
    return ""
