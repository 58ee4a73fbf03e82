"""What the state remembers of each feed's passes, and the resets the next pass carries out.

Both tables (``passes``, ``resets``) come with step 1 of :mod:`fetcher.state.schema`; a state
file older than that, opened read-only, has neither, and reads as "no pass recorded, no reset
asked".
"""

from __future__ import annotations

from dataclasses import dataclass

from fetcher.state.connection import Connection

_RECORD_FIELDS = (
    "feed_id, started_at, last_started_at, last_ended_at, last_result, last_records, "
    "last_files, files_total, last_ok_at, error, error_at"
)


@dataclass(frozen=True)
class PassRecord:
    """What the state says of one feed's passes (times in ISO 8601 UTC).

    ``started_at`` is the start of the latest pass; when it is later than ``last_started_at`` that
    pass is under way, or was killed. ``last_*`` describe the last pass that finished; ``error``
    and ``error_at`` the last one that failed, even if later passes went well.
    """

    feed_id: str
    started_at: str | None
    last_started_at: str | None
    last_ended_at: str | None
    last_result: str | None  # "ok" | "failed"
    last_records: int
    last_files: int
    files_total: int
    last_ok_at: str | None
    error: str | None
    error_at: str | None

    @property
    def running(self) -> bool:
        """A pass started after the last one that finished (under way, or killed)."""
        return self.started_at is not None and self.started_at != self.last_started_at


@dataclass(frozen=True)
class PendingReset:
    """A reset the next pass carries out: ``since`` is the cursor it starts from (None: the start)."""

    feed_id: str
    since: str | None
    rewrite: bool
    asked_at: str


class PassLog:
    """The ``passes`` and ``resets`` tables of a :class:`fetcher.state.ledger.Ledger`."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def started(self, feed_id: str, at: str) -> None:
        self._db.run(
            [
                (
                    "INSERT INTO passes (feed_id, started_at) VALUES (?, ?) "
                    "ON CONFLICT (feed_id) DO UPDATE SET started_at = excluded.started_at",
                    (feed_id, at),
                )
            ]
        )

    def finished(
        self, feed_id: str, at: str, *, error: str | None, records: int, files: int
    ) -> None:
        """Record the end of the pass :meth:`started` began (``error`` None: it went well)."""
        self._db.run(
            [
                (
                    "UPDATE passes SET last_started_at = started_at, last_ended_at = ?, "
                    "last_result = ?, last_records = ?, last_files = ?, "
                    "files_total = files_total + ?, "
                    "last_ok_at = CASE WHEN ? IS NULL THEN ? ELSE last_ok_at END, "
                    "error = coalesce(?, error), "
                    "error_at = CASE WHEN ? IS NULL THEN error_at ELSE ? END "
                    "WHERE feed_id = ?",
                    (
                        at,
                        "ok" if error is None else "failed",
                        records,
                        files,
                        files,
                        error,
                        at,
                        error,
                        error,
                        at,
                        feed_id,
                    ),
                )
            ]
        )

    def records(self) -> dict[str, PassRecord]:
        """The pass record of every feed that has one (none in a state file older than schema 1)."""
        if self._db.schema_version < 1:
            return {}
        rows = self._db.rows(f"SELECT {_RECORD_FIELDS} FROM passes", ())  # noqa: S608
        return {str(row[0]): PassRecord(*row) for row in rows}

    def request_reset(self, reset: PendingReset) -> None:
        self._db.run(
            [
                (
                    "INSERT INTO resets (feed_id, since, rewrite, asked_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (feed_id) DO UPDATE SET since = excluded.since, "
                    "rewrite = excluded.rewrite, asked_at = excluded.asked_at",
                    (reset.feed_id, reset.since, int(reset.rewrite), reset.asked_at),
                )
            ]
        )

    def pending_resets(self) -> dict[str, PendingReset]:
        if self._db.schema_version < 1:
            return {}
        rows = self._db.rows("SELECT feed_id, since, rewrite, asked_at FROM resets", ())
        return {
            str(feed): PendingReset(str(feed), since, bool(rewrite), str(asked))
            for feed, since, rewrite, asked in rows
        }

    def clear_reset(self, feed_id: str) -> None:
        self._db.run([("DELETE FROM resets WHERE feed_id = ?", (feed_id,))])
