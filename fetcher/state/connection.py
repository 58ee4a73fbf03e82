"""The one SQLite connection to the fetcher's state file: opening it, bringing its schema up to
date (:mod:`fetcher.state.schema`), reads, and commits batched into one transaction.

Only the modules of :mod:`fetcher.state` hold one; each writes the SQL of its own tables.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fetcher.errors import LedgerError
from fetcher.state.schema import BASE, MIGRATIONS, SCHEMA_VERSION

#: One SQL statement and its arguments.
Statement = tuple[str, tuple[Any, ...]]


class Connection:
    """The state file at ``path``, opened for writing (created and migrated) or read-only."""

    def __init__(self, path: Path, *, read_only: bool) -> None:
        self.path = path
        self._pending: list[Statement] | None = None
        if read_only:
            self._db = self._open_read_only()
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            # WAL + FULL: a committed cursor or ledger entry survives a power cut.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(BASE)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot open the fetcher state: {exc}", path=path) from None

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
                f"BEGIN IMMEDIATE; {MIGRATIONS[step]} PRAGMA user_version = {step + 1}; COMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return int(self.rows("PRAGMA user_version", ())[0][0])

    def has_table(self, name: str) -> bool:
        """Whether the state file has table ``name`` (a read-only open of an old one may not)."""
        return bool(
            self.rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        )

    def close(self) -> None:
        self._db.close()

    def rows(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Rows of one read (writes of an open :meth:`batch` are not visible yet)."""
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
                self.run(pending, durable=durable)

    def run(self, statements: Iterable[Statement], *, durable: bool = True) -> None:
        """Run statements in one transaction, or in the open :meth:`batch`."""
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
