"""The fetcher's own database: per-feed cursors, the report files written, transfers, the mirror.

It lives in the state directory (default ``SPOOL_DIR/.fetcher/``), not in the file list of the spool,
so dedup holds after ``incoming/`` has been emptied, moved to ``done/`` or copied away.

Tables:

* ``cursors(feed_id, name, value)`` — server-provided positions (``listing``: the ``added_after``
  the next pass starts from).
* ``reports(feed_id, report_id, sha256, path)`` — the sha256 of the last report file written.
* ``transfers(path, sha256, marked_at)`` — files ``ctx-fetcher transfer --mark`` recorded as
  carried across the air gap (path relative to ``SPOOL_DIR``); never read by the dedup.
* ``mirror`` — the newest version of every object, owned by :mod:`fetcher.mirror`.
* ``passes(feed_id, …)`` — when the latest pass of each feed started, and when the last finished
  one ended, how, with what error and how many files it wrote (``ctx-fetcher state`` and
  ``health`` read it).
* ``resets(feed_id, since, rewrite, asked_at)`` — a ``ctx-fetcher reset`` the next pass of the
  feed still has to carry out (:mod:`fetcher.reset`).
* ``report_gaps`` — reports that name objects the mirror does not hold yet, owned by
  :mod:`fetcher.gaps` (schema 2).

The schema's version is SQLite's ``user_version`` (https://sqlite.org/pragma.html#pragma_user_version):
a state file of an older fetcher is brought up to date when it is opened for writing, and a read-only
open (``Ledger(..., read_only=True)``) of an older file sees no pass records rather than failing.

Entries are recorded only after the file is published: a crash in between makes the next pass
publish the same content-addressed name again, which :func:`shared.durable.publish_staged` turns
into a no-op.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fetcher.errors import LedgerError

DB_NAME = "fetcher.sqlite3"
#: The cursor of the objects listing: the ``added_after`` the next pass starts from.
LISTING_CURSOR = "listing"

#: Pages of write-ahead log after which a commit checkpoints it into the database.
WAL_CHECKPOINT_PAGES = 10_000

#: One SQL statement and its arguments.
Statement = tuple[str, tuple[Any, ...]]

_SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS cursors (
    feed_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (feed_id, name));
CREATE TABLE IF NOT EXISTS reports (
    feed_id TEXT NOT NULL, report_id TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
    PRIMARY KEY (feed_id, report_id));
CREATE TABLE IF NOT EXISTS transfers (
    path TEXT NOT NULL PRIMARY KEY, sha256 TEXT NOT NULL, marked_at TEXT NOT NULL);
"""

#: Each step brings ``user_version`` from its index to index + 1. Steps only add, so a state file
#: written before a step keeps every cursor and ledger entry it had.
_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS passes (
        feed_id TEXT NOT NULL PRIMARY KEY,
        started_at TEXT,
        last_started_at TEXT, last_ended_at TEXT, last_result TEXT,
        last_records INTEGER NOT NULL DEFAULT 0, last_files INTEGER NOT NULL DEFAULT 0,
        files_total INTEGER NOT NULL DEFAULT 0,
        last_ok_at TEXT, error TEXT, error_at TEXT);
    CREATE TABLE IF NOT EXISTS resets (
        feed_id TEXT NOT NULL PRIMARY KEY, since TEXT, rewrite INTEGER NOT NULL,
        asked_at TEXT NOT NULL);
    """,
    """
    CREATE TABLE IF NOT EXISTS report_gaps (
        feed_id TEXT NOT NULL, report_id TEXT NOT NULL, member_id TEXT NOT NULL,
        since TEXT NOT NULL, written INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (feed_id, report_id, member_id));
    CREATE INDEX IF NOT EXISTS report_gaps_member ON report_gaps (feed_id, member_id);
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


class Ledger:
    """Cursors and dedup records of every feed. Use from one thread.

    Other processes read through their own read-only ledgers (``read_only=True``): SQLite in WAL
    mode lets readers read the last commit while this one writes
    (https://sqlite.org/wal.html#concurrency).
    """

    def __init__(self, state_dir: Path, *, read_only: bool = False) -> None:
        """Open (and create, or bring up to date) the state in ``state_dir``.

        ``read_only``: nothing is created, migrated or written, and a missing state file is a
        :class:`LedgerError`; for commands that only look.
        """
        self.path = Path(state_dir) / DB_NAME
        self._pending: list[Statement] | None = None
        if read_only:
            self._db = self._open_read_only()
            return
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            # WAL + FULL: a committed cursor or ledger entry survives a power cut.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # A checkpoint copies the log into the database and fsyncs both; at SQLite's default
            # (every 1,000 pages of log, https://sqlite.org/wal.html#ckpt) a pass checkpoints
            # every few pages of the listing, rewriting the same index pages each time. Every
            # 10,000 pages (40 MB of log at most) applying a pass of 22,428 records took about
            # 0.5 s instead of 0.65 s (isolated replay); nothing changes for durability.
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            self._db.executescript(_SCHEMA_V0)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the fetcher state: {exc}", path=self.path) from None

    def _open_read_only(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise LedgerError(f"no fetcher state at {self.path.absolute()}", path=self.path)
        try:
            # mode=ro (https://sqlite.org/uri.html#urimode): the database is never written; in WAL
            # mode a reader still uses the -wal/-shm files beside it.
            db = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
            )
            db.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the fetcher state: {exc}", path=self.path) from None
        return db

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"the fetcher state is of schema {version}, written by a newer ctx-fetcher "
                f"(this one knows up to {SCHEMA_VERSION}); not touching it",
                path=self.path,
            )
        for step in range(version, SCHEMA_VERSION):
            # executescript commits first; the DDL and the version go in one transaction.
            self._db.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[step]} PRAGMA user_version = {step + 1}; COMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version", ())[0][0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def executescript(self, script: str) -> None:
        """Run DDL (``CREATE … IF NOT EXISTS``) of a table another module owns."""
        try:
            self._db.executescript(script)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot prepare the fetcher state: {exc}", path=self.path) from None

    def query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of one read (writes of an open :meth:`batch` are not visible yet)."""
        return self._query(sql, args)

    def write(self, statements: Iterable[Statement]) -> None:
        """Run statements in one transaction, or in the open :meth:`batch`."""
        self._write(statements)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"fetcher state query failed: {exc}", path=self.path) from None

    @contextlib.contextmanager
    def batch(self, *, durable: bool = True) -> Iterator[None]:
        """Writes made inside are committed in one transaction when it ends, even by an error.

        One durable commit per page of the listing or group of files instead of one per object
        or file (a commit is an fsync). Safe for the same reason recording after publishing
        is: an entry missing after a crash only makes the next pass do the same work again, with
        the same result. Reads inside do not see the writes not committed yet.

        ``durable=False`` commits without waiting for the disk (SQLite's ``synchronous=NORMAL``
        in WAL mode, https://www.sqlite.org/pragma.html#pragma_synchronous): a power cut may
        roll back the newest such commits, whole and in order, never half of one. For the
        listing's pages that only means reading them again, since the cursor moves in the same
        commit as the records it covers. The next durable commit makes them durable too.
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
                self._write(pending, durable=durable)

    def _write(self, statements: Iterable[Statement], *, durable: bool = True) -> None:
        if self._pending is not None:
            self._pending.extend(statements)
            return
        try:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._commit(statements)
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise LedgerError(f"fetcher state write failed: {exc}", path=self.path) from None

    def _commit(self, statements: Iterable[Statement]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # Runs of the same statement go through executemany: one prepared statement.
            for sql, rows in itertools.groupby(statements, key=operator.itemgetter(0)):
                self._db.executemany(sql, (args for _, args in rows))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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

    def report_shas(self, feed_id: str, report_ids: list[str]) -> dict[str, str]:
        """The sha256 of the file last written for each of these reports (those with none are left
        out)."""
        rows = self._query(
            "SELECT report_id, sha256 FROM reports WHERE feed_id = ? "
            "AND report_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(report_ids)),
        )
        return {str(report_id): str(sha) for report_id, sha in rows}

    def record_report(self, feed_id: str, report_id: str, sha256: str, path: str) -> None:
        """Record the file published for a report (its sha256 and path relative to incoming/)."""
        self._write(
            [
                (
                    "INSERT INTO reports (feed_id, report_id, sha256, path) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (feed_id, report_id) DO UPDATE SET sha256 = excluded.sha256, "
                    "path = excluded.path",
                    (feed_id, report_id, sha256, path),
                )
            ]
        )

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

    def cursors(self) -> dict[tuple[str, str], str]:
        """Every saved cursor, by ``(feed_id, name)``."""
        rows = self._query("SELECT feed_id, name, value FROM cursors", ())
        return {(str(feed), str(name)): str(value) for feed, name, value in rows}

    def forget_reports(self, feed_id: str, report_ids: list[str]) -> None:
        """Drop the dedup entries of these reports: their next file is written even if unchanged."""
        self._write(
            [
                (
                    "DELETE FROM reports WHERE feed_id = ? "
                    "AND report_id IN (SELECT value FROM json_each(?))",
                    (feed_id, json.dumps(report_ids)),
                )
            ]
        )
