"""Checks of one spool file before import: its name, its bytes (read once, with their digest),
its signature, its STIX content.

Every refusal here is a :class:`uploader.errors.BundleRejected` whose ``kind`` is written into the
``.reason`` file: ``invalid-name``, ``symlink``, ``unreadable``, ``unsigned``, ``bad-signature``,
``invalid-stix``. The bundle's shape (``not-json``, ``not-a-bundle``, ``empty``,
``invalid-bundle``) is refused by :func:`uploader.importing.scan.check_bundle`, and bytes that do
not match the SHA-256 in the name (``corrupt``) by :mod:`uploader.importing.admit`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.durable import sha256_bytes
from shared.errors import UnsafeNameError
from shared.layout import PATH_RULE, SpoolName, parse_relative_path
from shared.signing import SigningKey
from uploader.errors import BundleRejected


@dataclass(frozen=True)
class SpoolFile:
    """One bundle file read from the spool, with what its name promises and what it holds."""

    feed_id: str
    name: SpoolName
    data: bytes
    actual_sha256: str
    size: int
    mtime_ns: int
    inode: tuple[int, int]

    @property
    def digest_ok(self) -> bool:
        return self.actual_sha256 == self.name.sha256


def parse_name(rel: PurePosixPath) -> tuple[str, SpoolName]:
    """Feed id and name of ``rel``, or :class:`BundleRejected` ``invalid-name``."""
    try:
        return parse_relative_path(rel)
    except UnsafeNameError:
        raise BundleRejected(
            "invalid-name", f"{str(rel)[:200]!r} is not a spool file name: {PATH_RULE}"
        ) from None


def under_symlinked_folder(incoming: Path, rel: PurePosixPath) -> bool:
    """True if a folder between ``incoming`` and the file is a symlink (or not a folder)."""
    folder = incoming
    for part in rel.parts[:-1]:
        folder = folder / part
        try:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                return True
        except FileNotFoundError:
            return False
    return False


def read_spool_file(path: Path, rel: PurePosixPath) -> SpoolFile:
    """Read ``path`` without following a symlink and hash it.

    Raises :class:`BundleRejected` (``symlink``, ``invalid-name``, ``unreadable``) and
    :class:`FileNotFoundError` if the file went away.
    """
    feed_id, name = parse_name(rel)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError as exc:
        raise BundleRejected("unreadable", f"cannot read: {exc.strerror}", path) from None
    except OSError as exc:
        if path.is_symlink():
            raise BundleRejected("symlink", "symbolic links are never followed", path) from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise BundleRejected("unreadable", f"cannot open: {exc.strerror or exc}", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BundleRejected("unreadable", "not a regular file", path)
        # Plain reads of the size fstat gave (one allocation, no buffered file object around the
        # descriptor: fewer syscalls per file); a file still growing is read to its end.
        # A short read of a regular file is its end: no second read (and no 1 MiB buffer) for it.
        chunks = []
        want = st.st_size + 1
        while chunk := os.read(fd, want):
            chunks.append(chunk)
            if len(chunk) < want:
                break
            want = 1 << 20
    except OSError as exc:
        raise BundleRejected("unreadable", f"cannot read: {exc.strerror or exc}", path) from None
    finally:
        os.close(fd)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return SpoolFile(
        feed_id=feed_id,
        name=name,
        data=data,
        actual_sha256=sha256_bytes(data),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        inode=(st.st_dev, st.st_ino),
    )


def check_signature(key: SigningKey, spool_file: SpoolFile) -> None:
    """Refuse a file whose name carries no signature (``unsigned``) or a wrong one
    (``bad-signature``) under ``key``."""
    signature = spool_file.name.signature
    if signature is None:
        raise BundleRejected("unsigned", "the name carries no signature and a key is set")
    if not key.verify(spool_file.data, signature):
        raise BundleRejected(
            "bad-signature",
            "the signature in the name is not the HMAC of the bytes under our key "
            "(another key, or altered bytes and name)",
        )


def check_stix(bundle: dict[str, Any]) -> None:
    """Strict STIX 2.1 validation with stix2 (custom types allowed), else ``invalid-stix``."""
    import stix2  # imported here: only strict mode pays for it

    try:
        stix2.parse(bundle, allow_custom=True, version="2.1")
    except Exception as exc:  # noqa: BLE001 - whatever stix2 raises, the content is at fault
        raise BundleRejected(
            "invalid-stix", f"stix2 refused the bundle: {type(exc).__name__}: {exc}"[:2000]
        ) from None
