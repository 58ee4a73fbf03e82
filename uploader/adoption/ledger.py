"""The adoption ledger: which source files' contents were adopted into the spool, keyed by digest.

One SQLite file, ``SPOOL_DIR/.adopt/ledger.sqlite3`` (all of its SQL is in this module). A row is
written only after the spool copy is durable and before the source file is removed, so after a
crash at any point a file is either in the ledger (its copy is in the spool) or adopted again
under the same content-addressed name, which :mod:`uploader.adoption.adopt` finds and does not publish
twice. The ledger survives restarts and never forgets: the same bytes dropped again next month
are recognised and not imported again (``ctx-uploader replay`` is the way to import twice).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from shared.durable import makedirs_durable
from shared.errors import SpoolError

LEDGER_NAME = "ledger.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS adopted (
    source_sha256 TEXT PRIMARY KEY,
    source_name TEXT NOT NULL,
    spool_path TEXT NOT NULL,
    outcome TEXT NOT NULL,
    adopted_at REAL NOT NULL
)
"""


class AdoptLedger:
    """Digest → where its content went; thread-safe, one connection."""

    def __init__(self, directory: Path) -> None:
        try:
            makedirs_durable(directory)
            self._db = sqlite3.connect(
                directory / LEDGER_NAME, isolation_level=None, check_same_thread=False
            )
            # A row must be on disk before the source file it stands for is removed.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open the adoption ledger: {exc}", directory) from exc
        self._lock = threading.Lock()

    def spool_path(self, source_sha256: str) -> str | None:
        """Where the content with this digest was put (``<state>/<rel>``), None if never adopted."""
        with self._lock:
            row = self._db.execute(
                "SELECT spool_path FROM adopted WHERE source_sha256 = ?", (source_sha256,)
            ).fetchone()
        return None if row is None else str(row[0])

    def record(self, source_sha256: str, source_name: str, spool_path: str, outcome: str) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT OR IGNORE INTO adopted VALUES (?, ?, ?, ?, ?)",
                    (source_sha256, source_name, spool_path, outcome, time.time()),
                )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot record {source_name} as adopted: {exc}", None) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
