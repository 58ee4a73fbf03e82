"""The fetcher's own state: per-feed cursors and the dedup ledger, in one SQLite database.

It lives in the state directory (default ``SPOOL_DIR/.fetcher/``), not in the file list of the spool,
so dedup holds after ``incoming/`` has been emptied, moved to ``done/`` or copied away (issue 2).

Tables:

* ``cursors(feed_id, name, value)`` — server-provided cursor strings (``reports``, ``objects``).
* ``reports(feed_id, report_id, sha256, path)`` — the sha256 of the last report bundle written.
* ``objects(feed_id, object_id, sha256)`` — the sha256 of each object's content as last written in
  any bundle, so feed-level bundles hold only what no written bundle carried yet.
* ``transfers(path, sha256, marked_at)`` — files ``ctx-fetcher transfer --mark`` recorded as
  carried across the air gap (path relative to ``SPOOL_DIR``); never read by the dedup.

Entries are recorded only after the file is published: a crash in between makes the next pass
publish the same content-addressed name again, which :func:`shared.durable.publish_bytes` turns into
a no-op.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from fetcher.errors import LedgerError

DB_NAME = "fetcher.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    feed_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (feed_id, name));
CREATE TABLE IF NOT EXISTS reports (
    feed_id TEXT NOT NULL, report_id TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (feed_id, report_id));
CREATE TABLE IF NOT EXISTS objects (
    feed_id TEXT NOT NULL, object_id TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (feed_id, object_id));
CREATE TABLE IF NOT EXISTS transfers (
    path TEXT NOT NULL PRIMARY KEY, sha256 TEXT NOT NULL, marked_at TEXT NOT NULL);
"""


class Ledger:
    """Cursors and dedup records of every feed. Use from one thread."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / DB_NAME
        self._pending: list[tuple[str, tuple[Any, ...]]] | None = None
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            # WAL + FULL: a committed cursor or ledger entry survives a power cut.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the fetcher state: {exc}", path=self.path) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"fetcher state query failed: {exc}", path=self.path) from None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Writes made inside are committed in one transaction when it ends, even by an error.

        One durable commit per page of reports instead of one per report (make bench, issue 6:
        the per-report commits were a third of the time the pass spent writing files). Safe for
        the same reason recording after publishing is: an entry missing after a crash only
        makes the next pass publish the same name again, a no-op. Reads inside do not see the
        writes not committed yet.
        """
        if self._pending is not None:
            yield
            return
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            if pending:
                self._write(pending)

    def _write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        if self._pending is not None:
            self._pending.extend(statements)
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LedgerError(f"fetcher state write failed: {exc}", path=self.path) from None

    def cursor(self, feed_id: str, name: str) -> str | None:
        rows = self._query(
            "SELECT value FROM cursors WHERE feed_id = ? AND name = ?", (feed_id, name)
        )
        return str(rows[0][0]) if rows else None

    def set_cursor(self, feed_id: str, name: str, value: str) -> None:
        self._write(
            [
                (
                    "INSERT INTO cursors (feed_id, name, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (feed_id, name) DO UPDATE SET value = excluded.value",
                    (feed_id, name, value),
                )
            ]
        )

    def report_sha(self, feed_id: str, report_id: str) -> str | None:
        rows = self._query(
            "SELECT sha256 FROM reports WHERE feed_id = ? AND report_id = ?", (feed_id, report_id)
        )
        return str(rows[0][0]) if rows else None

    def object_sha(self, feed_id: str, object_id: str) -> str | None:
        rows = self._query(
            "SELECT sha256 FROM objects WHERE feed_id = ? AND object_id = ?", (feed_id, object_id)
        )
        return str(rows[0][0]) if rows else None

    def record(
        self,
        feed_id: str,
        object_shas: Mapping[str, str],
        *,
        report: tuple[str, str, str] | None = None,
    ) -> None:
        """Record a published file: its objects' shas and, for a report bundle, (id, sha, path)."""
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT INTO objects (feed_id, object_id, sha256) VALUES (?, ?, ?) "
                "ON CONFLICT (feed_id, object_id) DO UPDATE SET sha256 = excluded.sha256",
                (feed_id, object_id, sha),
            )
            for object_id, sha in object_shas.items()
        ]
        if report is not None:
            statements.append(
                (
                    "INSERT INTO reports (feed_id, report_id, sha256, path) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (feed_id, report_id) DO UPDATE SET sha256 = excluded.sha256, "
                    "path = excluded.path",
                    (feed_id, *report),
                )
            )
        self._write(statements)

    def transferred(self) -> set[str]:
        """Paths (relative to ``SPOOL_DIR``) recorded as transferred."""
        return {str(row[0]) for row in self._query("SELECT path FROM transfers", ())}

    def mark_transferred(self, files: Iterable[tuple[str, str]], marked_at: str) -> None:
        """Record ``(path, sha256)`` pairs as transferred at ``marked_at`` (ISO time), in one go."""
        self._write(
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
