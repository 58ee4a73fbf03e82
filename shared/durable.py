"""Durable file operations: files appear whole or not at all, and survive a crash once they do.

A file is written under a hidden temp name (:func:`temp_name`) in its final directory, fsynced,
renamed into place, and the directory fsynced (:func:`write_atomic`, :func:`publish_bytes`); a
move never replaces an existing file
(:func:`move_no_replace`). The spool's readers (:func:`shared.layout.walk_bundles`) skip hidden
names, so they never see a half-written file. The SHA-256 helpers live here too: both halves check
a content-addressed name against the bytes on disk with them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from shared.errors import DestinationExistsError, SpoolError

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks (never follows a final symlink)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def same_bytes(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` hold the same bytes (two symlinks: the same target; False if
    either cannot be read)."""
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and a.readlink() == b.readlink()
    try:
        return sha256_file(a) == sha256_file(b)
    except OSError:
        return False


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or create inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (SMB, some FUSE) refuse fsync on directories; the rename is still atomic.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """Create ``path`` and its parents, fsyncing each parent whose entries changed."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


def temp_name(final_name: str) -> str:
    """A hidden temp name next to ``final_name`` that no reader takes for a bundle."""
    return f".{final_name}.{secrets.token_hex(6)}.tmp"


_TEMP_NAME_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def remove_stale_temps(root: Path, older_than: float) -> int:
    """Delete our own temp files (:func:`temp_name`) under ``root`` older than ``older_than`` s.

    A writer killed between creating its temp file and the rename leaves it behind; no reader
    takes it for a bundle, but ``rsync -a`` would carry it across the gap. Only names of exactly
    our pattern are touched (never rsync's ``.name.XXXXXX`` of a copy in progress), and only old
    ones, so a write in progress is never disturbed. Returns how many were removed.
    """
    cutoff = time.time() - older_than
    removed = 0
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif (
                    _TEMP_NAME_RE.match(entry.name)
                    and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff
                ):
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
    return removed


def write_atomic(path: Path, data: bytes | Sequence[bytes], *, sync_dir: bool = True) -> None:
    """Write ``data`` (bytes, or pieces written one after the other) to ``path`` atomically and durably, replacing any existing file.

    A hidden temp file in the same directory is written, fsynced and renamed over ``path``, then
    the directory is fsynced. Raises :class:`SpoolError` on any I/O failure, leaving no partial file
    and no temp file behind.

    ``sync_dir=False`` leaves the directory's fsync to the caller, who must fsync that directory
    after a later operation in it (the uploader's receipt and the bundle moved beside it: one
    directory fsync makes both durable). The file's own bytes are always fsynced before the
    rename, so the name never points at a partial file after a crash.
    """
    tmp = _stage(path, data)
    try:
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        _discard(tmp)
        raise SpoolError(f"cannot write {path.name}: {exc.strerror or exc}", path) from exc


def _stage(path: Path, data: bytes | Sequence[bytes]) -> Path:
    """Write ``data`` durably to a hidden temp file beside ``path``; return the temp file.

    Raises :class:`SpoolError`, leaving no temp file behind. A temp file a crash leaves is
    removed by :func:`remove_stale_temps`.
    """
    directory = path.parent
    try:
        makedirs_durable(directory)
        tmp = directory / temp_name(path.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                _write_all(fd, [data] if isinstance(data, bytes) else data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _discard(tmp)
            raise
    except OSError as exc:
        raise SpoolError(f"cannot write {path.name}: {exc.strerror or exc}", path) from exc
    return tmp


def _write_all(fd: int, pieces: Sequence[bytes]) -> None:
    """Write ``pieces`` one after the other, small ones gathered into writes of about 1 MiB."""
    group: list[bytes] = []
    size = 0
    for piece in [*pieces, b""]:
        if piece and len(piece) < _CHUNK:
            group.append(piece)
            size += len(piece)
            if size < _CHUNK:
                continue
        if group:
            _write_view(fd, memoryview(b"".join(group)))
            group, size = [], 0
        if len(piece) >= _CHUNK:
            _write_view(fd, memoryview(piece))


def _write_view(fd: int, view: memoryview) -> None:
    written = 0
    while written < len(view):
        written += os.write(fd, view[written : written + _CHUNK])


def _present(path: Path, size: int) -> bool:
    """``path`` is a file of ``size`` bytes: for a content-addressed name, the same bytes."""
    return path.is_file() and path.stat().st_size == size


def _discard(tmp: Path) -> None:
    """Drop a temp file of :func:`_stage` that will not be renamed into place."""
    with contextlib.suppress(OSError):
        tmp.unlink()


def publish_bytes(path: Path, data: bytes | Sequence[bytes]) -> bool:
    """Publish ``data`` (bytes, or pieces) at its content-addressed ``path`` with
    :func:`write_atomic`.

    Returns False (and writes nothing) if ``path`` already exists with the same size, which for a
    content-addressed name means the same bytes: a file the spool holds already is not written
    again, however large.
    """
    size = len(data) if isinstance(data, bytes) else sum(len(piece) for piece in data)
    try:
        if _present(path, size):
            return False
    except OSError as exc:
        raise SpoolError(f"cannot publish {path.name}: {exc.strerror or exc}", path) from exc
    write_atomic(path, data)
    return True


def move_no_replace(src: Path, dst: Path, *, sync_source: bool = True) -> None:
    """Move ``src`` to ``dst`` durably without ever overwriting ``dst``.

    Uses link+unlink (atomic no-replace) where the filesystem has hard links, else a checked rename.
    Raises :class:`DestinationExistsError` if ``dst`` exists, :class:`SpoolError` on I/O errors.

    ``dst``'s folder is always fsynced. ``sync_source=False`` skips the fsync of ``src``'s folder
    for callers whose readers treat a copy left in both places by a crash as a duplicate (the
    uploader's claim folder: reclaim drops a claimed copy whose bytes are already in done/ or
    failed/); the removal still reaches the disk with the filesystem's next commit.
    """
    try:
        makedirs_durable(dst.parent)
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise DestinationExistsError(f"{dst.name} already exists", dst) from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if dst.exists() or dst.is_symlink():
                raise DestinationExistsError(f"{dst.name} already exists", dst) from None
            os.rename(src, dst)
        else:
            os.unlink(src)
        fsync_dir(dst.parent)
        if sync_source and src.parent != dst.parent:
            fsync_dir(src.parent)
    except OSError as exc:
        raise SpoolError(f"cannot move {src.name}: {exc.strerror or exc}", src) from exc
