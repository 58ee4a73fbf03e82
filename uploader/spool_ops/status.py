"""``status``: files and bytes per state and feed, and the oldest pending file (read-only)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from shared.layout import (
    INCOMING,
    PROCESSING,
    STATES,
    Spool,
    walk_bundle_paths,
)


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
