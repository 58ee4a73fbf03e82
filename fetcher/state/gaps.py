"""Reports that name objects the mirror does not hold: waiting for them, or written without them.

stix2arango stores an upload's vertices and its relationships in separate transactions
(``stix2arango/stix2arango.py``: ``process_bundle_into_graph``, then ``map_relationships``), and
CTX's own TAXII connector uploads page by page, so a report is often listed before the objects its
``object_refs`` name. Such a report waits (no file) until the mirror holds every object it names,
for at most a grace from when it was first found lacking one; after that it is written with what
exists, and the objects it lacked stay recorded here, so that the arrival of one of them writes
the report again (:meth:`ReportGaps.awaiting`).

Table ``report_gaps(feed_id, report_id, member_id, since, written)``: one row per object a report
names that the mirror lacked when the report was last looked at; ``since`` is when the report was
first found lacking (the same for all its rows), ``written`` 0 while it waits and 1 once a file
carries it without them. A report with no row is complete. Step 2 of :mod:`fetcher.state.schema`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from fetcher.state.connection import Connection, Statement


@dataclass(frozen=True)
class GapCounts:
    """Per feed: reports waiting for objects they name, and reports written without some."""

    waiting: int = 0
    incomplete: int = 0


class ReportGaps:
    """The ``report_gaps`` table of a :class:`fetcher.state.ledger.Ledger`."""

    def __init__(self, db: Connection) -> None:
        self._db = db

    def since(self, feed_id: str, report_ids: list[str]) -> dict[str, str]:
        """When each of these reports was first found lacking an object (those with no gap are
        left out)."""
        if self._db.schema_version < 2:
            return {}
        rows = self._db.rows(
            "SELECT report_id, min(since) FROM report_gaps WHERE feed_id = ? "
            "AND report_id IN (SELECT value FROM json_each(?)) GROUP BY report_id",
            (feed_id, json.dumps(report_ids)),
        )
        return {str(report_id): str(since) for report_id, since in rows}

    def record(
        self, feed_id: str, report_id: str, missing: Iterable[str], *, since: str, written: bool
    ) -> None:
        """Replace what is recorded of ``report_id``: it lacks ``missing`` (none: complete)."""
        statements: list[Statement] = [
            (
                "DELETE FROM report_gaps WHERE feed_id = ? AND report_id = ?",
                (feed_id, report_id),
            )
        ]
        statements += [
            (
                "INSERT INTO report_gaps (feed_id, report_id, member_id, since, written) "
                "VALUES (?, ?, ?, ?, ?)",
                (feed_id, report_id, member_id, since, int(written)),
            )
            for member_id in dict.fromkeys(missing)
        ]
        self._db.run(statements)

    def awaiting(self, feed_id: str, member_ids: list[str]) -> list[str]:
        """The reports that lack one of ``member_ids``."""
        if not member_ids:
            return []
        rows = self._db.rows(
            "SELECT DISTINCT report_id FROM report_gaps WHERE feed_id = ? "
            "AND member_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(member_ids)),
        )
        return [str(row[0]) for row in rows]

    def incomplete(self, feed_id: str) -> dict[str, list[str]]:
        """Reports written without some objects they name: those objects, by report."""
        if self._db.schema_version < 2:
            return {}
        found: dict[str, list[str]] = {}
        for report_id, member_id in self._db.rows(
            "SELECT report_id, member_id FROM report_gaps WHERE feed_id = ? AND written = 1 "
            "ORDER BY report_id, member_id",
            (feed_id,),
        ):
            found.setdefault(str(report_id), []).append(str(member_id))
        return found

    def counts(self) -> dict[str, GapCounts]:
        """:class:`GapCounts` of every feed that has a gap."""
        if self._db.schema_version < 2:
            return {}
        rows = self._db.rows(
            "SELECT feed_id, count(DISTINCT CASE WHEN written = 0 THEN report_id END), "
            "count(DISTINCT CASE WHEN written = 1 THEN report_id END) "
            "FROM report_gaps GROUP BY feed_id",
            (),
        )
        return {str(feed): GapCounts(int(w), int(i)) for feed, w, i in rows}
