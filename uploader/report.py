"""``status`` and ``verify``: read-only views of the spool (no pycti, no platform)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from shared.errors import UnsafeNameError
from shared.spool import INCOMING, PROCESSING, STATES, Spool, sha256_file, walk_bundles
from shared.spool import parse_relative_path as parse_rel


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


def _walk(spool: Spool) -> list[_Found]:
    found = []
    for state in STATES:
        root = spool.state_dir(state)
        if state == PROCESSING:
            for entry in walk_bundles(root):
                instance, *rest = entry.relative.parts
                if not rest:
                    continue
                found.append(
                    _Found(state, entry.path, PurePosixPath(*rest), instance, entry.is_symlink)
                )
        else:
            for entry in walk_bundles(root):
                found.append(_Found(state, entry.path, entry.relative, None, entry.is_symlink))
    return found


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
    """Walk every state of the spool (symlinks counted, never followed)."""
    now = time.time() if now is None else now
    result = Status(states={state: Tally() for state in STATES})
    oldest: tuple[float, str] | None = None
    for item in _walk(spool):
        try:
            st = os.lstat(item.path)
        except FileNotFoundError:
            continue
        result.states[item.state].add(st.st_size)
        by_state = result.feeds.setdefault(item.feed, {state: Tally() for state in STATES})
        by_state[item.state].add(st.st_size)
        if item.state in (INCOMING, PROCESSING) and (oldest is None or st.st_mtime < oldest[0]):
            oldest = (st.st_mtime, item.display)
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


def verify(spool: Spool) -> tuple[int, list[BadFile]]:
    """Check every ``.json`` in every state against the SHA-256 in its name.

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
            bad.append(
                BadFile(
                    item.display, "name is not <modified>_<id>_<sha256>.json in a dated feed folder"
                )
            )
            continue
        try:
            actual = sha256_file(item.path)
        except FileNotFoundError:
            checked -= 1
            continue
        except OSError as exc:
            bad.append(BadFile(item.display, f"unreadable: {exc.strerror or exc}"))
            continue
        if actual != name.sha256:
            bad.append(BadFile(item.display, f"SHA-256 is {actual}, name says {name.sha256}"))
    return checked, bad
