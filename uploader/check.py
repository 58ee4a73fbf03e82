"""Checks of one spool file before import: its name, its bytes, its digest, its content.

Every refusal is a :class:`uploader.errors.BundleRejected` whose ``kind`` is written into the
``.reason`` file: ``symlink``, ``invalid-name``, ``unreadable``, ``corrupt``, ``not-json``,
``not-a-bundle``, ``empty``, ``invalid-bundle``, ``invalid-stix``.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.errors import UnsafeNameError
from shared.spool import SpoolName, parse_relative_path, sha256_bytes
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
    except UnsafeNameError as exc:
        raise BundleRejected("invalid-name", str(exc)) from None


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
        chunks = []
        with os.fdopen(fd, "rb", closefd=False) as fh:
            while chunk := fh.read(1 << 20):
                chunks.append(chunk)
    except OSError as exc:
        raise BundleRejected("unreadable", f"cannot read: {exc.strerror or exc}", path) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return SpoolFile(
        feed_id=feed_id,
        name=name,
        data=data,
        actual_sha256=sha256_bytes(data),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        inode=(st.st_dev, st.st_ino),
    )


def check_bundle(data: bytes) -> dict[str, Any]:
    """The parsed bundle if ``data`` is a usable STIX bundle, else :class:`BundleRejected`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleRejected("not-json", f"not UTF-8 at byte {exc.start}") from None
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleRejected("not-json", f"not JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        # Deeply nested arrays/objects exhaust the parser's stack: the content is at fault, and
        # left to the retry loop the file would never leave incoming/ (issue 5).
        raise BundleRejected("not-json", "JSON nested too deeply to parse") from None
    if not isinstance(bundle, dict) or bundle.get("type") != "bundle":
        raise BundleRejected("not-a-bundle", "top level is not an object with type 'bundle'")
    objects = bundle.get("objects")
    if objects is None or objects == []:
        raise BundleRejected("empty", "the bundle has no objects")
    if not isinstance(objects, list):
        raise BundleRejected("invalid-bundle", "'objects' is not a list")
    for index, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise BundleRejected("invalid-bundle", f"objects[{index}] is not an object")
        if not isinstance(obj.get("type"), str) or not isinstance(obj.get("id"), str):
            raise BundleRejected("invalid-bundle", f"objects[{index}] has no string type and id")
    return bundle


def check_stix(bundle: dict[str, Any]) -> None:
    """Strict STIX 2.1 validation with stix2 (custom types allowed), else ``invalid-stix``."""
    import stix2  # imported here: only strict mode pays for it

    try:
        stix2.parse(bundle, allow_custom=True, version="2.1")
    except Exception as exc:  # noqa: BLE001 - whatever stix2 raises, the content is at fault
        raise BundleRejected(
            "invalid-stix", f"stix2 refused the bundle: {type(exc).__name__}: {exc}"[:2000]
        ) from None
