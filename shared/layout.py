"""The spool's layout and names: where each bundle file lives and what its name says.

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
* Files are published atomically and durably (:func:`shared.durable.publish_bytes`): a hidden temp
  name in the same directory, fsync, rename, fsync of the directory. Readers ignore hidden names
  and anything that does not end in ``.json``, so they never see a partial bundle.
* Sidecars (``.receipt``, ``.reason``, ``.source``) do not end in ``.json`` and so are never taken
  for bundles. ``.source`` is the origin of an adopted file (``ctx-uploader adopt``, the drop
  folder): the pycti connector that wrote it, its applicant, ``update`` and its original name.
* ``.adopt/`` holds the adoption ledger (digests of the files adopted, so none is adopted twice).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from shared.durable import makedirs_durable
from shared.errors import NotASpoolError, SpoolError, UnsafeNameError
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
SOURCE_SUFFIX = ".source"
ADOPT_STATE_DIRNAME = ".adopt"
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


#: What a bundle file's path must be, in words: ``verify`` and the uploader's ``invalid-name``
#: refusal say the same thing.
PATH_RULE = (
    "a spool file must be <feed UUID>/<YYYY>/<MM>/<DD>/<modified>_<report id or objects>_"
    "<sha256>[_<signature>].json, its date folders those of <modified>"
)


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


def sidecar_path(bundle_path: Path, suffix: str) -> Path:
    """``<bundle file name><suffix>`` beside the bundle (``.receipt``, ``.reason``, ``.source``)."""
    return bundle_path.with_name(bundle_path.name + suffix)


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
    one bad folder must not hide every file walked after it. ``root`` itself raises.
    """
    for path, rel, is_symlink in walk_bundle_paths(root):
        yield SpoolEntry(Path(path), PurePosixPath(rel), is_symlink)


def walk_bundle_paths(root: Path) -> Iterator[tuple[str, str, bool]]:
    """:func:`walk_bundles` as plain strings: ``(path, relative posix path, is_symlink)``.

    For walks over a whole spool (100,000 files): building two path objects per file was most of
    the time of ``ctx-uploader status`` and of the uploader's start-up scan.
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
    def adopt_state(self) -> Path:
        """Where the adoption ledger lives (``.adopt/``, hidden: never walked as a feed)."""
        return self.root / ADOPT_STATE_DIRNAME

    def path_in(self, state: str, rel: PurePosixPath | str) -> Path:
        """The path of ``rel`` in ``state``, refusing anything that would leave that directory."""
        rel = PurePosixPath(rel)
        if rel.is_absolute() or any(p in ("", ".", "..") for p in rel.parts):
            raise UnsafeNameError("spool path", str(rel))
        return self.state_dir(state).joinpath(*rel.parts)

    def require(self) -> None:
        """Raise :class:`NotASpoolError` unless the root is a directory holding at least one of
        the state folders (``incoming/``, ``processing/``, ``done/``, ``failed/``).

        For the commands that only read a spool: a wrong SPOOL_DIR (or working directory, the
        default being relative) must not read as an empty spool. The error names the absolute path.
        """
        root = self.root.absolute()
        if not root.is_dir():
            raise NotASpoolError(
                f"SPOOL_DIR {root} does not exist or is not a directory; is SPOOL_DIR right?", root
            )
        if not any((root / state).is_dir() for state in STATES):
            folders = ", ".join(f"{state}/" for state in STATES)
            raise NotASpoolError(
                f"{root} is not a spool: it has none of {folders}; is SPOOL_DIR right?", root
            )

    def ensure(self) -> None:
        """Create the state directories that do not exist yet."""
        for state in (INCOMING, DONE, FAILED):
            try:
                makedirs_durable(self.root / state)
            except OSError as exc:
                raise SpoolError(
                    f"cannot create {state}/: {exc.strerror or exc}", self.root
                ) from exc
