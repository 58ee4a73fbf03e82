"""``status`` and ``verify``: read-only views of the spool (no pycti, no platform)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from shared.errors import UnsafeNameError
from shared.layout import (
    DONE,
    FAILED,
    INCOMING,
    PATH_RULE,
    PROCESSING,
    STATES,
    Spool,
    SpoolName,
    walk_bundle_paths,
    walk_bundles,
)
from shared.layout import parse_relative_path as parse_rel
from shared.signing import SigningKey


@dataclass(frozen=True)
class _Found:
    state: str
    path: Path
    rel: PurePosixPath  # relative to the state folder (for processing/: below the instance)
    instance: str | None
    is_symlink: bool

    @property
    def feed(self) -> str:
        return self.rel.parts[0] if len(self.rel.parts) > 1 else "-"

    @property
    def display(self) -> str:
        middle = f"{self.instance}/" if self.instance else ""
        return f"{self.state}/{middle}{self.rel}"


def _walk(spool: Spool) -> Iterator[_Found]:
    for state in STATES:
        root = spool.state_dir(state)
        if state == PROCESSING:
            for entry in walk_bundles(root):
                instance, *rest = entry.relative.parts
                if not rest:
                    continue
                yield _Found(state, entry.path, PurePosixPath(*rest), instance, entry.is_symlink)
        else:
            for entry in walk_bundles(root):
                yield _Found(state, entry.path, entry.relative, None, entry.is_symlink)


@dataclass
class Tally:
    """Files and bytes."""

    files: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.files += 1
        self.bytes += size


@dataclass
class Status:
    """Counts and bytes per state and per feed, and the oldest pending file."""

    states: dict[str, Tally] = field(default_factory=dict)
    feeds: dict[str, dict[str, Tally]] = field(default_factory=dict)
    oldest_pending: str | None = None
    oldest_pending_age: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "states": {s: {"files": t.files, "bytes": t.bytes} for s, t in self.states.items()},
            "feeds": {
                feed: {s: {"files": t.files, "bytes": t.bytes} for s, t in by_state.items()}
                for feed, by_state in sorted(self.feeds.items())
            },
            "oldest_pending": (
                None
                if self.oldest_pending is None
                else {
                    "file": self.oldest_pending,
                    "age_seconds": round(self.oldest_pending_age or 0, 1),
                }
            ),
        }


def status(spool: Spool, now: float | None = None) -> Status:
    """Walk every state of the spool (symlinks counted, never followed).

    Streams plain strings (:func:`walk_bundle_paths`) and keeps only the tallies, so memory does
    not grow with the number of files and 100,000 files take about a second.
    """
    now = time.time() if now is None else now
    result = Status(states={state: Tally() for state in STATES})
    oldest: tuple[float, str] | None = None
    for state in STATES:
        tally = result.states[state]
        pending = state in (INCOMING, PROCESSING)
        for path, rel, _is_symlink in walk_bundle_paths(spool.state_dir(state)):
            middle = ""
            if state == PROCESSING:
                instance, _, rel = rel.partition("/")
                if not rel:
                    continue
                middle = f"{instance}/"
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            size = st.st_size
            tally.files += 1
            tally.bytes += size
            feed, slash, _ = rel.partition("/")
            by_state = result.feeds.get(feed if slash else "-")
            if by_state is None:
                by_state = result.feeds[feed if slash else "-"] = {s: Tally() for s in STATES}
            by_state[state].add(size)
            if pending and (oldest is None or st.st_mtime < oldest[0]):
                oldest = (st.st_mtime, f"{state}/{middle}{rel}")
    if oldest is not None:
        result.oldest_pending = oldest[1]
        result.oldest_pending_age = max(0.0, now - oldest[0])
    return result


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def status_table(result: Status) -> str:
    """A plain-text table: one row per state, then one row per feed."""
    header = ["", *STATES]
    rows = [header]
    rows.append(["files", *(str(result.states[s].files) for s in STATES)])
    rows.append(["bytes", *(_human(result.states[s].bytes) for s in STATES)])
    lines = _format(rows)
    if result.feeds:
        feed_rows = [["feed", *STATES]]
        for feed, by_state in sorted(result.feeds.items()):
            feed_rows.append(
                [feed, *(f"{by_state[s].files} ({_human(by_state[s].bytes)})" for s in STATES)]
            )
        lines += ["", *_format(feed_rows)]
    lines.append("")
    if result.oldest_pending is None:
        lines.append("oldest pending: none")
    else:
        lines.append(
            f"oldest pending: {result.oldest_pending} ({_age(result.oldest_pending_age or 0)} old)"
        )
    return "\n".join(lines)


def _format(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


@dataclass(frozen=True)
class BadFile:
    """A spool file whose bytes do not match its name (or that cannot be checked)."""

    path: str
    problem: str


def _digests(path: Path, key: SigningKey | None) -> tuple[str, str | None]:
    """SHA-256 of a file's bytes and, with a key, their signature: one read, no symlink followed."""
    digest = hashlib.sha256()
    mac = None if key is None else key.new_mac()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            if mac is not None:
                mac.update(chunk)
    return digest.hexdigest(), None if mac is None else mac.hexdigest()


def _check_file(
    path: Path, name: SpoolName, key: SigningKey | None, expected_sha256: str | None = None
) -> str | None:
    """What is wrong with one file (None: nothing); FileNotFoundError if it went away.

    The signature is checked only once the bytes match the SHA-256, as the uploader does.
    """
    try:
        actual, mac = _digests(path, key)
    except FileNotFoundError:
        raise
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if expected_sha256 is not None and actual != expected_sha256:
        return f"SHA-256 is {actual}, manifest says {expected_sha256}"
    if actual != name.sha256:
        return f"SHA-256 is {actual}, name says {name.sha256}"
    if key is None:
        return None
    if name.signature is None:
        return "unsigned: the name carries no signature and a signing key is set"
    if mac is None or not key.verify_mac_hex(mac, name.signature):
        return "bad-signature: the signature in the name is not the HMAC of the bytes under our key"
    return None


def verify(spool: Spool, key: SigningKey | None = None) -> tuple[int, list[BadFile]]:
    """Check every ``.json`` in every state against the SHA-256 in its name (and, with a signing
    key, against the signature in its name: unsigned and wrongly signed files are bad).

    Returns how many files were checked and the bad ones.
    """
    checked = 0
    bad = []
    for item in _walk(spool):
        checked += 1
        if item.is_symlink:
            bad.append(BadFile(item.display, "symbolic link"))
            continue
        try:
            _feed, name = parse_rel(item.rel)
        except UnsafeNameError:
            bad.append(BadFile(item.display, f"not a spool file name: {PATH_RULE}"))
            continue
        try:
            problem = _check_file(item.path, name, key)
        except FileNotFoundError:
            checked -= 1
            continue
        if problem is not None:
            bad.append(BadFile(item.display, problem))
    return checked, bad


# sha256sum's output: "<hex>  <path>" (text mode) or "<hex> *<path>" (binary mode).
_MANIFEST_LINE = re.compile(r"^(?P<sha256>[0-9a-fA-F]{64}) [ *](?P<path>.+)$")


def _locate(spool: Spool, rel: PurePosixPath) -> tuple[str, Path] | None:
    """Where ``rel`` is now: incoming/, any processing/<instance>/, done/ or failed/."""
    candidates = [(f"{INCOMING}/{rel}", spool.path_in(INCOMING, rel))]
    try:
        instances = sorted(p.name for p in spool.processing.iterdir() if p.is_dir())
    except OSError:
        instances = []
    for instance in instances:
        if not instance.startswith("."):
            path = spool.processing / instance / Path(*rel.parts)
            candidates.append((f"{PROCESSING}/{instance}/{rel}", path))
    candidates += [(f"{state}/{rel}", spool.path_in(state, rel)) for state in (DONE, FAILED)]
    for display, path in candidates:
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                return display, path
        except OSError:
            continue
    return None


def verify_manifest(
    spool: Spool, manifest: Path, key: SigningKey | None = None
) -> tuple[int, list[BadFile]]:
    """Check each line of a ``sha256sum`` manifest written by ``ctx-fetcher transfer``.

    Each file must be somewhere in the spool (it may have been imported already) with the listed
    SHA-256 (and, with a key, a valid signature). Returns how many lines were checked and the bad
    ones; raises OSError if the manifest cannot be read.
    """
    checked = 0
    bad = []
    text = manifest.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        checked += 1
        match = _MANIFEST_LINE.match(line)
        if not match:
            bad.append(BadFile(f"line {number}", "not a `<sha256>  <path>` line"))
            continue
        shown, expected = match["path"], match["sha256"].lower()
        parts = PurePosixPath(shown).parts
        try:
            if len(parts) < 2 or parts[0] not in STATES:
                raise UnsafeNameError("spool path", shown)
            rel = PurePosixPath(*parts[1:])
            _feed, name = parse_rel(rel)
        except UnsafeNameError:
            bad.append(BadFile(shown, "not a spool file path (incoming/<feed>/<date>/<name>.json)"))
            continue
        found = _locate(spool, rel)
        if found is None:
            bad.append(BadFile(shown, "missing: in no state of the spool"))
            continue
        display, path = found
        try:
            problem = _check_file(path, name, key, expected)
        except FileNotFoundError:
            problem = "missing: moved away while being checked"
        if problem is not None:
            bad.append(BadFile(shown, f"{problem} (at {display})"))
    return checked, bad
