"""Copies in progress: a file whose digest does not match its name yet is waited for, not failed.

A file copied into ``incoming/`` by ``cp`` appears before it is complete. The SHA-256 in its name
tells: while it does not match, the file is given time to settle; once its size and mtime have
not changed for ``settle_seconds`` and it still does not match, it is corrupt. While a large file
keeps changing, a stat is enough: it is not read and hashed again until it has stood still.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import PurePosixPath


class Settling:
    """What was seen of each file whose digest did not match (thread-safe)."""

    def __init__(self, settle_seconds: float, clock: Callable[[], float]) -> None:
        self.settle_seconds = settle_seconds
        self.clock = clock
        # rel → ((size, mtime_ns), since when unchanged, SHA-256 read at that size/mtime or "").
        self._seen: dict[PurePosixPath, tuple[tuple[int, int], float, str]] = {}
        self._lock = threading.Lock()

    def forget(self, rel: PurePosixPath) -> None:
        """The file matched, or left ``incoming/``."""
        with self._lock:
            self._seen.pop(rel, None)

    def wait_before_reading(self, rel: PurePosixPath, size: int, mtime_ns: int) -> float | None:
        """For a file already seen with a wrong digest: seconds to wait before reading it again.

        None: read it now (never seen, or unchanged for long enough to be judged).
        """
        now = self.clock()
        signature = (size, mtime_ns)
        settle = self.settle_seconds
        with self._lock:
            previous = self._seen.get(rel)
            if previous is None:
                return None
            if previous[0] != signature:
                self._seen[rel] = (signature, now, "")
                return min(0.2, max(0.05, settle))
            waited = now - previous[1]
            if previous[2] and waited < settle:
                return min(1.0, max(0.05, settle - waited))
        return None

    def mismatch(
        self, rel: PurePosixPath, size: int, mtime_ns: int, sha256: str
    ) -> tuple[float, bool]:
        """Record a read whose digest did not match: ``(seconds unchanged, first time seen)``.

        The file is corrupt once the seconds reach ``settle_seconds``.
        """
        now = self.clock()
        signature = (size, mtime_ns)
        with self._lock:
            previous = self._seen.get(rel)
            since = now if previous is None or previous[0] != signature else previous[1]
            self._seen[rel] = (signature, since, sha256)
        return now - since, previous is None
