"""The spool: the only contract between the fetcher and the uploader.

Layout (relative to ``SPOOL_DIR``)::

    incoming/<feed_id>/<YYYY>/<MM>/<DD>/<modified>_<stix id | "objects">_<sha256>.json
    processing/<uploader instance>/<same relative path>   claimed by one uploader
    done/<same relative path>          accepted by OpenCTI, plus <name>.receipt beside it
    failed/<same relative path>        refused by content, plus <name>.reason beside it
    .fetcher/                          the fetcher's cursor and dedup ledger (default place)

* ``<modified>`` is UTC ``%Y%m%dT%H%M%S%fZ`` so that names sort in modified order; the date folders
  come from the same time.
* ``<sha256>`` is the hex SHA-256 of the file's exact bytes: a file can be checked by its name alone.
* A signed file's name carries one more part before ``.json``: ``_<hmac>``, the HMAC-SHA256 of the
  same bytes truncated to 32 hex digits (:mod:`shared.signing`). Unsigned names are unchanged.
* Files are published atomically and durably (:func:`publish_bytes`): a hidden temp name in the same
  directory, fsync, rename, fsync of the directory. Readers ignore hidden names and anything that
  does not end in ``.json``, so they never see a partial bundle.
* Sidecars (``.receipt``, ``.reason``) do not end in ``.json`` and so are never taken for bundles.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from shared.errors import DestinationExistsError, SpoolError, UnsafeNameError
from shared.signing import SIGNATURE_HEX_LENGTH, SIGNATURE_RE

logger = logging.getLogger(__name__)

INCOMING = "incoming"
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"
STATES = (INCOMING, PROCESSING, DONE, FAILED)
FETCHER_STATE_DIRNAME = ".fetcher"

BUNDLE_SUFFIX = ".json"
RECEIPT_SUFFIX = ".receipt"
REASON_SUFFIX = ".reason"
FEED_OBJECTS_SUBJECT = "objects"

MODIFIED_FORMAT = "%Y%m%dT%H%M%S%fZ"

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(rf"^{_UUID}$")
# STIX 2.1 §2.7: a type is 3-250 characters of a-z, 0-9 and '-', starting with a letter
# (custom types may start with "x-"); the id is <type>--<UUID>.
_STIX_TYPE = r"[a-z][a-z0-9-]{1,248}[a-z0-9]"
_STIX_ID_RE = re.compile(rf"^{_STIX_TYPE}--{_UUID}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(
    rf"^(?P<modified>\d{{8}}T\d{{12}}Z)_(?P<subject>{FEED_OBJECTS_SUBJECT}|{_STIX_TYPE}--{_UUID})"
    rf"_(?P<sha256>[0-9a-f]{{64}})(?:_(?P<signature>[0-9a-f]{{{SIGNATURE_HEX_LENGTH}}}))?\.json$"
)

# Namespace of the deterministic bundle ids (uuid5 over the canonical objects).
BUNDLE_NAMESPACE = uuid.UUID("6b1e3c1a-2f4d-5e8b-9a7c-0d1e2f3a4b5c")

_CHUNK = 1 << 20


def check_feed_id(value: object) -> str:
    """Return ``value`` if it is a lower-case canonical UUID, else raise :class:`UnsafeNameError`."""
    if isinstance(value, str) and _UUID_RE.match(value.lower()):
        return value.lower()
    raise UnsafeNameError("feed id", str(value))


def check_stix_id(value: object) -> str:
    """Return ``value`` if it is a STIX id ``<type>--<uuid>``, else raise :class:`UnsafeNameError`."""
    if isinstance(value, str) and _STIX_ID_RE.match(value):
        return value
    raise UnsafeNameError("STIX id", str(value))


def check_sha256(value: object) -> str:
    """Return ``value`` if it is 64 lower-case hex digits, else raise :class:`UnsafeNameError`."""
    if isinstance(value, str) and _SHA256_RE.match(value):
        return value
    raise UnsafeNameError("sha256", str(value))


def parse_stix_timestamp(value: str) -> datetime:
    """Parse a STIX/CTX timestamp (``2024-05-01T10:00:00.123Z``, any sub-second digits) to UTC."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # fromisoformat takes at most 6 fractional digits; STIX allows more, which carry no order here
    # beyond microseconds.
    match = re.match(r"^(.*?\.\d{6})\d+(.*)$", text)
    if match:
        text = match.group(1) + match.group(2)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a timestamp: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True, order=True)
class SpoolName:
    """The parts of a bundle file name: ``<modified>_<subject>_<sha256>[_<signature>].json``.

    ``signature`` is the truncated HMAC of a signed file (:mod:`shared.signing`), None if unsigned.
    """

    modified: datetime
    subject: str
    sha256: str
    signature: str | None = None

    def __post_init__(self) -> None:
        if self.subject != FEED_OBJECTS_SUBJECT:
            check_stix_id(self.subject)
        check_sha256(self.sha256)
        if self.signature is not None and not SIGNATURE_RE.match(self.signature):
            raise UnsafeNameError("signature", self.signature)
        if self.modified.tzinfo is None:
            raise ValueError("SpoolName.modified must be timezone-aware")

    @property
    def filename(self) -> str:
        stamp = self.modified.astimezone(UTC).strftime(MODIFIED_FORMAT)
        signed = "" if self.signature is None else f"_{self.signature}"
        return f"{stamp}_{self.subject}_{self.sha256}{signed}{BUNDLE_SUFFIX}"

    @classmethod
    def parse(cls, filename: str) -> SpoolName:
        """Parse a bundle file name; raise :class:`UnsafeNameError` if it is not one."""
        match = _NAME_RE.match(filename)
        if not match:
            raise UnsafeNameError("spool file name", filename)
        modified = datetime.strptime(match["modified"], MODIFIED_FORMAT).replace(tzinfo=UTC)
        return cls(modified, match["subject"], match["sha256"], match["signature"])


def relative_path(feed_id: str, name: SpoolName) -> PurePosixPath:
    """``<feed_id>/<YYYY>/<MM>/<DD>/<filename>`` for a bundle of ``feed_id``."""
    day = name.modified.astimezone(UTC)
    return PurePosixPath(
        check_feed_id(feed_id), f"{day:%Y}", f"{day:%m}", f"{day:%d}", name.filename
    )


def parse_relative_path(rel: PurePosixPath | str) -> tuple[str, SpoolName]:
    """Check a path relative to a state directory and return its feed id and name.

    Raises :class:`UnsafeNameError` unless it is exactly ``<uuid>/<YYYY>/<MM>/<DD>/<name>`` with the
    date folders matching the name's modified time.
    """
    parts = PurePosixPath(rel).parts
    if len(parts) != 5:
        raise UnsafeNameError("spool path", str(rel))
    feed_id = check_feed_id(parts[0])
    if parts[0] != feed_id:
        raise UnsafeNameError("spool path", str(rel))
    name = SpoolName.parse(parts[4])
    if relative_path(feed_id, name) != PurePosixPath(*parts):
        raise UnsafeNameError("spool path", str(rel))
    return feed_id, name


def canonical_json(obj: Any) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, no insignificant whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


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


def make_bundle(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A STIX 2.1 bundle with a deterministic id and objects in a deterministic order.

    Objects are sorted by (id, modified) and exact duplicates dropped, so the same content always
    gives the same bytes under :func:`canonical_json`.
    """
    unique: dict[bytes, dict[str, Any]] = {}
    for obj in objects:
        unique.setdefault(canonical_json(obj), obj)
    ordered = sorted(
        unique.items(),
        key=lambda kv: (str(kv[1].get("id", "")), str(kv[1].get("modified", "")), kv[0]),
    )
    body = b"[" + b",".join(k for k, _ in ordered) + b"]"
    bundle_id = f"bundle--{uuid.uuid5(BUNDLE_NAMESPACE, sha256_bytes(body))}"
    return {"type": "bundle", "id": bundle_id, "objects": [obj for _, obj in ordered]}


def bundle_json(objects: Iterable[dict[str, Any]]) -> bytes:
    """``canonical_json(make_bundle(objects))``, serialising every object only once.

    The same bytes (sorted keys, same order, same deterministic id), built from each object's
    canonical bytes instead of serialising the whole bundle again: for a 40 MB report bundle that is
    two fewer copies of it in memory at once (issue 6).
    """
    return b"".join(BundleBuilder.of(objects).chunks())


class BundleBuilder:
    """:func:`bundle_json` fed one object at a time; only each object's canonical bytes are kept.

    A report bundle of 40 MB then never exists as dicts all at once: each page of the CTX answer
    is reduced to bytes as it arrives (issue 6, big bundle). ``object_shas`` maps every id to the
    SHA-256 of its canonical bytes (the last object of an id wins): what the fetcher's ledger keeps.
    """

    def __init__(self) -> None:
        self._keys: dict[bytes, tuple[str, str]] = {}
        self.object_shas: dict[str, str] = {}

    @classmethod
    def of(cls, objects: Iterable[dict[str, Any]]) -> BundleBuilder:
        """A builder with every one of ``objects`` added."""
        builder = cls()
        for obj in objects:
            builder.add(obj)
        return builder

    def add(self, obj: dict[str, Any]) -> None:
        data = canonical_json(obj)
        self.object_shas[str(obj.get("id", ""))] = sha256_bytes(data)
        if data not in self._keys:
            self._keys[data] = (str(obj.get("id", "")), str(obj.get("modified", "")))

    def chunks(self) -> list[bytes]:
        """The bundle's bytes in pieces (joined, they are :func:`bundle_json`'s); empties the builder."""
        keys, self._keys = self._keys, {}
        ordered = sorted(keys, key=lambda k: (*keys[k], k))
        keys.clear()
        digest = hashlib.sha256(b"[")
        pieces: list[bytes] = [b""]
        for index, data in enumerate(ordered):
            if index:
                digest.update(b",")
                pieces.append(b",")
            digest.update(data)
            pieces.append(data)
        digest.update(b"]")
        bundle_id = f"bundle--{uuid.uuid5(BUNDLE_NAMESPACE, digest.hexdigest())}"
        pieces[0] = b'{"id":"' + bundle_id.encode("ascii") + b'","objects":['
        pieces.append(b'],"type":"bundle"}')
        return pieces


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


def _makedirs_durable(path: Path) -> None:
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


def write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically and durably, replacing any existing file.

    A hidden temp file in the same directory is written, fsynced and renamed over ``path``, then
    the directory is fsynced. Raises :class:`SpoolError` on any I/O failure, leaving no partial file
    and no temp file behind.

    ``sync_dir=False`` leaves the directory's fsync to the caller, who must fsync that directory
    after a later operation in it (the uploader's receipt and the bundle moved beside it: one
    directory fsync makes both durable, issue 6). The file's own bytes are always fsynced before the
    rename, so the name never points at a partial file after a crash.
    """
    tmp = stage_bytes(path, data)
    try:
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except OSError as exc:
        discard_staged(tmp)
        raise SpoolError(f"cannot write {path.name}: {exc.strerror or exc}", path) from exc


def stage_bytes(path: Path, data: bytes | Sequence[bytes]) -> Path:
    """Write ``data`` durably to a hidden temp file beside ``path``; return the temp file.

    The first half of :func:`write_atomic`, for writers that stage files in parallel and publish
    them in order with :func:`publish_staged` (the fetcher: issue 6). Raises :class:`SpoolError`,
    leaving no temp file behind. A temp file a crash leaves is removed by
    :func:`remove_stale_temps`.
    """
    directory = path.parent
    try:
        _makedirs_durable(directory)
        tmp = directory / temp_name(path.name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                _write_all(fd, [data] if isinstance(data, bytes) else data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            discard_staged(tmp)
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


def publish_staged(tmp: Path, path: Path) -> bool:
    """Rename a :func:`stage_bytes` temp file to its content-addressed ``path`` and fsync the folder.

    Returns False (and drops the temp file) if ``path`` already exists with the same size, as
    :func:`publish_bytes` does. Raises :class:`SpoolError`; the temp file is gone either way.
    """
    published = False
    try:
        if not _present(path, tmp.stat().st_size):
            os.replace(tmp, path)
            published = True
            fsync_dir(path.parent)
    except OSError as exc:
        raise SpoolError(f"cannot publish {path.name}: {exc.strerror or exc}", path) from exc
    finally:
        if not published:
            discard_staged(tmp)
    return published


def _present(path: Path, size: int) -> bool:
    """``path`` is a file of ``size`` bytes: for a content-addressed name, the same bytes."""
    return path.is_file() and path.stat().st_size == size


def discard_staged(tmp: Path) -> None:
    """Drop a :func:`stage_bytes` temp file that will not be published."""
    with contextlib.suppress(OSError):
        tmp.unlink()


def publish_bytes(path: Path, data: bytes) -> bool:
    """Publish ``data`` at its content-addressed ``path`` with :func:`write_atomic`.

    Returns False (and writes nothing) if ``path`` already exists with the same size, which for a
    content-addressed name means the same bytes.
    """
    try:
        if _present(path, len(data)):
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
        _makedirs_durable(dst.parent)
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


@dataclass(frozen=True)
class SpoolEntry:
    """A candidate bundle file found in a state directory."""

    path: Path
    relative: PurePosixPath
    is_symlink: bool


def walk_bundles(root: Path) -> Iterator[SpoolEntry]:
    """Yield every ``*.json`` entry under ``root`` that is not hidden, without following symlinks.

    Hidden names (temp files, rsync's ``.name.XXXXXX``) and non-``.json`` names are skipped;
    symlinked files are yielded with ``is_symlink`` set so the caller can refuse them; symlinked
    directories are never entered. Order is by path, so within a feed by modified time.

    A folder below ``root`` that cannot be listed (permissions, I/O error) is logged and skipped:
    one bad folder must not hide every file walked after it (issue 5). ``root`` itself raises.
    """
    for path, rel, is_symlink in walk_bundle_paths(root):
        yield SpoolEntry(Path(path), PurePosixPath(rel), is_symlink)


def walk_bundle_paths(root: Path) -> Iterator[tuple[str, str, bool]]:
    """:func:`walk_bundles` as plain strings: ``(path, relative posix path, is_symlink)``.

    For walks over a whole spool (100,000 files): building two path objects per file was most of
    the time of ``ctx-uploader status`` and of the uploader's start-up scan (issue 6).
    """
    top = os.fspath(root)
    stack: list[tuple[str, str]] = [(top, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue
        except OSError as exc:
            if directory == top:
                raise
            logger.error(
                "cannot list %s, skipping it: %s",
                directory,
                exc.strerror or exc,
                extra={"dir": rel.rstrip("/") or "."},
            )
            continue
        files = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, f"{rel}{name}/"))
            elif name.endswith(BUNDLE_SUFFIX):
                files.append(entry)
        for entry in reversed(files):
            yield entry.path, f"{rel}{entry.name}", entry.is_symlink()


class Spool:
    """Paths of one spool directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def state_dir(self, state: str) -> Path:
        if state not in STATES:
            raise ValueError(f"unknown spool state {state!r}")
        return self.root / state

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING

    @property
    def processing(self) -> Path:
        return self.root / PROCESSING

    @property
    def done(self) -> Path:
        return self.root / DONE

    @property
    def failed(self) -> Path:
        return self.root / FAILED

    @property
    def default_fetcher_state(self) -> Path:
        return self.root / FETCHER_STATE_DIRNAME

    def path_in(self, state: str, rel: PurePosixPath | str) -> Path:
        """The path of ``rel`` in ``state``, refusing anything that would leave that directory."""
        rel = PurePosixPath(rel)
        if rel.is_absolute() or any(p in ("", ".", "..") for p in rel.parts):
            raise UnsafeNameError("spool path", str(rel))
        return self.state_dir(state).joinpath(*rel.parts)

    def ensure(self) -> None:
        """Create the state directories that do not exist yet."""
        for state in (INCOMING, DONE, FAILED):
            try:
                _makedirs_durable(self.root / state)
            except OSError as exc:
                raise SpoolError(
                    f"cannot create {state}/: {exc.strerror or exc}", self.root
                ) from exc
