"""Claiming spool files: one uploader instance owns ``processing/<instance>/``.

A file is claimed by an atomic ``rename`` from ``incoming/<rel>`` to ``processing/<instance>/<rel>``
on the same filesystem (POSIX ``rename()``, Linux rename(2): atomic, and ``EXDEV`` across
filesystems): of two uploaders only one rename succeeds, the other gets ``ENOENT`` because the
source name is already gone. While it runs, an instance holds an exclusive ``flock`` on
``processing/<instance>/.lock``; a claim folder whose lock is free belongs to a dead uploader and
its files are put back into ``incoming/`` so nothing stays stuck after a kill -9.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from pathlib import Path, PurePosixPath

from shared.durable import move_no_replace, same_bytes
from shared.errors import DestinationExistsError, SpoolError
from shared.layout import DONE, FAILED, INCOMING, Spool, walk_bundles
from shared.lock import FileLock
from uploader.errors import InstanceBusyError
from uploader.settings import INSTANCE_ID_RE

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
LOCK_WAIT_SECONDS = 5.0
# Age after which a claim folder without a lock file is taken for a leftover.
ORPHAN_SECONDS = 60.0


def default_instance_id() -> str:
    """This host's name made into one safe path component (stable across restarts)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip(".-_")
    name = name[:100] or "uploader"
    if not INSTANCE_ID_RE.match(name):
        name = f"uploader-{name}"[:100]
    return name


class InstanceLock:
    """The exclusive lock of one instance's claim folder, held while the uploader runs."""

    def __init__(self, spool: Spool, instance: str) -> None:
        if not INSTANCE_ID_RE.match(instance):
            raise ValueError(f"unsafe instance id {instance!r}")
        self.spool = spool
        self.instance = instance
        self.directory = spool.processing / instance
        self.path = self.directory / LOCK_NAME
        self._lock = FileLock(self.path)

    def acquire(self, wait: float | None = None) -> None:
        """Take the lock or raise :class:`InstanceBusyError`; raises :class:`SpoolError` on I/O.

        Waits up to ``wait`` (default :data:`LOCK_WAIT_SECONDS`) seconds: another uploader
        reclaiming this folder after a crash holds the lock for as long as it takes to put the
        files back.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            taken = self._lock.acquire(LOCK_WAIT_SECONDS if wait is None else wait)
        except OSError as exc:
            raise SpoolError(f"cannot open claim lock: {exc.strerror or exc}", self.path) from exc
        if not taken:
            raise InstanceBusyError(self.instance, self.path)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ClaimLostError(Exception):
    """Internal signal: another uploader claimed (or removed) the file first."""


def claimed_path(spool: Spool, instance: str, rel: PurePosixPath) -> Path:
    return spool.processing / instance / Path(*rel.parts)


def claim(spool: Spool, instance: str, rel: PurePosixPath) -> Path:
    """Move ``incoming/<rel>`` into this instance's claim folder; return the claimed path.

    Raises :class:`ClaimLostError` if the file is gone (another uploader won the rename).
    """
    src = spool.path_in(INCOMING, rel)
    dst = claimed_path(spool, instance, rel)
    # Only this instance writes into its own folder (we hold its lock), so checking first is
    # race-free; rename() would silently replace a leftover that could not be put back.
    if os.path.lexists(dst):
        raise SpoolError(f"{rel} is already in this uploader's claim folder", dst)
    try:
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            # The claim folders are made on first use (one failed rename per new folder, not a
            # mkdir per file). A missing source raises again below.
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
    except FileNotFoundError:
        raise ClaimLostError(str(rel)) from None
    except OSError as exc:
        raise SpoolError(f"cannot claim {rel}: {exc.strerror or exc}", src) from exc
    return dst


def release_claim(
    spool: Spool, claimed: Path, rel: PurePosixPath, *, after_crash: bool = False
) -> bool:
    """Put a claimed file back into ``incoming/<rel>`` without ever overwriting anything.

    If ``incoming/<rel>`` already holds the same bytes the claimed copy is a duplicate and is
    dropped; ``after_crash`` (reclaiming a dead uploader's files) also drops it when ``done/<rel>``
    or ``failed/<rel>`` holds the same bytes. Returns False if the file had to stay where it is (a
    same-named file with different bytes: both are kept for a human to look at).
    """
    for state in (DONE, FAILED) if after_crash else ():
        other = spool.path_in(state, rel)
        # A crash between link() and unlink() of move_no_replace leaves the file both in the
        # outcome folder and in processing/: the outcome already happened, drop the claim copy.
        if other.is_file() and not claimed.is_symlink() and same_bytes(claimed, other):
            claimed.unlink()
            logger.info("dropped claim copy already in %s/", state, extra={"file": str(rel)})
            return True
    dst = spool.path_in(INCOMING, rel)
    try:
        move_no_replace(claimed, dst)
        return True
    except DestinationExistsError:
        pass
    if not claimed.is_symlink() and same_bytes(claimed, dst):
        claimed.unlink()
        return True
    logger.error(
        "cannot put claimed file back: incoming/ holds different bytes under the same name",
        extra={"file": str(rel), "claimed": str(claimed)},
    )
    return False


def _take_if_free(lock: FileLock) -> bool:
    """Take ``lock`` if no live uploader holds it (False if one does or it cannot be opened)."""
    # A folder without a lock file is either being set up by a starting uploader right now
    # (mkdir comes just before the lock) or a leftover: only the latter is ours to take.
    try:
        orphan = time.time() - lock.path.parent.stat().st_mtime > ORPHAN_SECONDS
        return lock.acquire(create=orphan)
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("cannot open claim lock %s: %s", lock.path, exc.strerror or exc)
        return False


def _release_all(spool: Spool, directory: Path) -> int:
    moved = 0
    for entry in walk_bundles(directory):
        rel = entry.relative
        try:
            if release_claim(spool, entry.path, rel, after_crash=True):
                moved += 1
        except (SpoolError, OSError) as exc:
            logger.error("cannot reclaim %s: %s", entry.path, exc, extra={"file": str(rel)})
    _prune_empty_dirs(directory)
    return moved


def _prune_empty_dirs(directory: Path) -> None:
    for dirpath, _dirnames, _filenames in sorted(
        os.walk(directory, followlinks=False), key=lambda t: len(t[0]), reverse=True
    ):
        if Path(dirpath) == directory:
            continue
        with contextlib.suppress(OSError):
            Path(dirpath).rmdir()


def claim_folders(spool: Spool) -> list[str]:
    """Names of the instance folders in ``processing/`` (real folders only, never symlinks)."""
    try:
        # One listing, no stat per folder (asked for every file).
        with os.scandir(spool.processing) as it:
            return sorted(
                entry.name
                for entry in it
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
            )
    except FileNotFoundError:
        return []


def reclaim_instance(spool: Spool, instance: str) -> int | None:
    """Put back what the stopped uploader ``instance`` left claimed; None if it is still running."""
    directory = spool.processing / instance
    lock = FileLock(directory / LOCK_NAME)
    if not _take_if_free(lock):
        return None
    try:
        count = _release_all(spool, directory)
    finally:
        lock.release()
    if count:
        logger.warning(
            "reclaimed %d file(s) left by stopped uploader %r",
            count,
            instance,
            extra={"instance": instance},
        )
    return count


def reclaim(spool: Spool, lock: InstanceLock, *, own: bool) -> int:
    """Put back into ``incoming/`` what dead uploaders (and, if ``own``, this one) left claimed.

    ``own`` is for start-up only: while running, this instance's folder holds its work in flight.
    Returns how many files were put back.
    """
    moved = 0
    for name in claim_folders(spool):
        if name == lock.instance:
            if own:
                moved += _release_all(spool, spool.processing / name)
            continue
        moved += reclaim_instance(spool, name) or 0
    return moved


def older_claim_elsewhere(
    spool: Spool, rel: PurePosixPath, instance: str
) -> tuple[str, PurePosixPath] | None:
    """An older file of ``rel``'s feed claimed by another uploader: ``(its instance, its path)``.

    Two uploaders on one spool must not let a newer version of a feed land before an older one
    that the other is still importing; claim folders only hold files in flight, so this is cheap.
    """
    if len(rel.parts) < 2:
        return None
    feed = rel.parts[0]
    for name in claim_folders(spool):
        if name == instance:
            continue
        feed_dir = spool.processing / name / feed
        if feed_dir.is_symlink() or not feed_dir.is_dir():
            continue
        for entry in walk_bundles(feed_dir):
            other = PurePosixPath(feed, *entry.relative.parts)
            if other < rel:
                return name, other
    return None
