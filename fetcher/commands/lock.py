"""One fetcher at a time per state directory: a :class:`shared.lock.FileLock` on
``<state>/fetcher.lock``.

``once`` and ``run`` hold it for as long as they run (``run`` between passes too), ``reset`` while
it changes the state; a second one is refused at once rather than left waiting. ``state``,
``health`` and ``transfer`` read (or only add transfer marks) and do not take it.
"""

from __future__ import annotations

from pathlib import Path

from fetcher.errors import LedgerError, StateBusyError
from shared.lock import FileLock

LOCK_NAME = "fetcher.lock"


class StateLock:
    """The exclusive lock of one fetcher state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._lock = FileLock(self.path)

    def acquire(self) -> None:
        """Take the lock or raise :class:`StateBusyError`; creates the state directory."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            taken = self._lock.acquire()
        except OSError as exc:
            raise LedgerError(
                f"cannot open the state lock: {exc.strerror or exc}", path=self.path
            ) from None
        if not taken:
            holder = self._lock.holder()
            raise StateBusyError(
                f"another ctx-fetcher{f' (pid {holder})' if holder else ''} is using the state "
                f"in {self.path.parent.absolute()}; stop it first (its lock {self.path.name} is held)",
                path=self.path,
            )

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
