"""The fetcher's own database: per-feed cursors, the report files written, transfers, the mirror.

It lives in the state directory (default ``SPOOL_DIR/.fetcher/``), not in the file list of the spool,
so dedup holds after ``incoming/`` has been emptied, moved to ``done/`` or copied away.

Tables (:mod:`fetcher.state.schema`), each with one owner:

* ``cursors(feed_id, name, value)`` — server-provided positions (``listing``: the ``added_after``
  the next pass starts from); :class:`Ledger`.
* ``reports(feed_id, report_id, sha256, path)`` — the sha256 of the last report file written;
  :class:`Ledger`.
* ``transfers(path, sha256, marked_at)`` — files ``ctx-fetcher transfer --mark`` recorded as
  carried across the air gap (path relative to ``SPOOL_DIR``); never read by the dedup;
  :class:`Ledger`.
* ``mirror`` — the newest version of every object: :class:`fetcher.state.mirror.Mirror`.
* ``passes`` and ``resets`` — what each feed's passes did, and the resets the next pass carries
  out: :class:`fetcher.state.pass_log.PassLog`.
* ``report_gaps`` — reports that name objects the mirror does not hold yet:
  :class:`fetcher.state.gaps.ReportGaps`.

A state file of an older fetcher is brought up to date when it is opened for writing; a read-only
open (``Ledger(..., read_only=True)``) of an older file sees no pass records rather than failing.

Entries are recorded only after the file is published: a crash in between makes the next pass
publish the same content-addressed name again, which :func:`shared.durable.publish_bytes` turns
into a no-op.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from fetcher.state.connection import Connection, Statement
from fetcher.state.gaps import ReportGaps
from fetcher.state.mirror import Mirror
from fetcher.state.pass_log import PassLog, PendingReset
from fetcher.state.schema import DB_NAME
from shared.errors import NotASpoolError, SpoolError
from shared.layout import Spool

#: The cursor of the objects listing: the ``added_after`` the next pass starts from.
LISTING_CURSOR = "listing"


class Ledger:
    """The fetcher's state database: cursors and dedup records of every feed, and its other tables
    (:attr:`mirror`, :attr:`passes`, :attr:`gaps`). Use from one thread.

    Other processes read through their own read-only ledgers (``read_only=True``): SQLite in WAL
    mode lets readers read the last commit while this one writes
    (https://sqlite.org/wal.html#concurrency).
    """

    def __init__(self, state_dir: Path, *, read_only: bool = False) -> None:
        """Open (and create, or bring up to date) the state in ``state_dir``.

        ``read_only``: nothing is created, migrated or written, and a missing state file is a
        :class:`fetcher.errors.LedgerError`; for commands that only look.
        """
        self.path = Path(state_dir) / DB_NAME
        self._db = Connection(self.path, read_only=read_only)
        self.mirror = Mirror(self._db)
        self.passes = PassLog(self._db)
        self.gaps = ReportGaps(self._db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def batch(self, *, durable: bool = True) -> Iterator[None]:
        """Every write inside, to any table, is committed in one transaction when it ends, even by
        an error (:meth:`fetcher.state.connection.Connection.batch`)."""
        with self._db.batch(durable=durable):
            yield

    def cursor(self, feed_id: str, name: str) -> str | None:
        rows = self._db.rows(
            "SELECT value FROM cursors WHERE feed_id = ? AND name = ?", (feed_id, name)
        )
        return str(rows[0][0]) if rows else None

    def set_cursor(self, feed_id: str, name: str, value: str) -> None:
        self._db.run([_set_cursor(feed_id, name, value)])

    def cursors(self) -> dict[tuple[str, str], str]:
        """Every saved cursor, by ``(feed_id, name)``."""
        rows = self._db.rows("SELECT feed_id, name, value FROM cursors", ())
        return {(str(feed), str(name)): str(value) for feed, name, value in rows}

    def request_reset(self, reset: PendingReset) -> None:
        """Move the feed's listing cursor to ``reset.since`` (None: drop it, the start) and record
        the reset for the next pass to carry out, in one transaction."""
        statements = [
            ("DELETE FROM cursors WHERE feed_id = ? AND name = ?", (reset.feed_id, LISTING_CURSOR))
            if reset.since is None
            else _set_cursor(reset.feed_id, LISTING_CURSOR, reset.since)
        ]
        with self._db.batch():
            self._db.run(statements)
            self.passes.request_reset(reset)

    def report_shas(self, feed_id: str, report_ids: list[str]) -> dict[str, str]:
        """The sha256 of the file last written for each of these reports (those with none are left
        out)."""
        rows = self._db.rows(
            "SELECT report_id, sha256 FROM reports WHERE feed_id = ? "
            "AND report_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(report_ids)),
        )
        return {str(report_id): str(sha) for report_id, sha in rows}

    def record_report(self, feed_id: str, report_id: str, sha256: str, path: str) -> None:
        """Record the file published for a report (its sha256 and path relative to incoming/)."""
        self._db.run(
            [
                (
                    "INSERT INTO reports (feed_id, report_id, sha256, path) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (feed_id, report_id) DO UPDATE SET sha256 = excluded.sha256, "
                    "path = excluded.path",
                    (feed_id, report_id, sha256, path),
                )
            ]
        )

    def forget_reports(self, feed_id: str, report_ids: list[str]) -> None:
        """Drop the dedup entries of these reports: their next file is written even if unchanged."""
        self._db.run(
            [
                (
                    "DELETE FROM reports WHERE feed_id = ? "
                    "AND report_id IN (SELECT value FROM json_each(?))",
                    (feed_id, json.dumps(report_ids)),
                )
            ]
        )

    def transferred(self) -> set[str]:
        """Paths (relative to ``SPOOL_DIR``) recorded as transferred."""
        return {str(row[0]) for row in self._db.rows("SELECT path FROM transfers", ())}

    def mark_transferred(self, files: Iterable[tuple[str, str]], marked_at: str) -> None:
        """Record ``(path, sha256)`` pairs as transferred at ``marked_at`` (ISO time), in one go."""
        self._db.run(
            [
                (
                    "INSERT INTO transfers (path, sha256, marked_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (path) DO UPDATE SET sha256 = excluded.sha256, "
                    "marked_at = excluded.marked_at",
                    (path, sha, marked_at),
                )
                for path, sha in files
            ]
        )


def _set_cursor(feed_id: str, name: str, value: str) -> Statement:
    return (
        "INSERT INTO cursors (feed_id, name, value) VALUES (?, ?, ?) "
        "ON CONFLICT (feed_id, name) DO UPDATE SET value = excluded.value",
        (feed_id, name, value),
    )


def open_state(spool_dir: Path, state_dir: Path) -> Ledger:
    """The fetcher's state, read-only; refuses a directory that is not a spool with state.

    A wrong SPOOL_DIR must not look like an empty, healthy spool.
    """
    if (state_dir / DB_NAME).is_file():
        return Ledger(state_dir, read_only=True)
    try:
        Spool(spool_dir).require()
    except SpoolError as exc:
        raise NotASpoolError(str(exc), spool_dir.absolute()) from None
    raise NotASpoolError(
        f"no fetcher state at {(state_dir / DB_NAME).absolute()}: the fetcher has not run with "
        "this SPOOL_DIR (or CYBERTHREATEXCHANGE_STATE_DIR)",
        state_dir.absolute(),
    )
