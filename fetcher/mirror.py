"""The newest version of every object of a feed, kept on disk beside the cursors.

The listing serves every stored version of every object, in no order a client can rely on, some
of them twice (:mod:`fetcher.walk`). The mirror makes that one answer per STIX id: a record
replaces the one kept only when its version is newer (:func:`fetcher.stix.version_key`), so an
older version, an unchanged re-upload or a record served again changes nothing, whichever order
they arrive in. Report files and feed-level files are built from it once the listing is read
(:mod:`fetcher.assemble`), so a report's file holds the newest version of everything it names.

Table ``mirror(feed_id, object_id, type, version, sha256, stamp, body, written, source_ref,
target_ref)``: ``body`` is the object's canonical JSON, zlib-compressed; ``written`` the
``sha256`` of the version last carried by a published file (NULL: none yet). An object whose
``written`` differs from its ``sha256`` is pending. It is on disk so that memory does not grow
with the feed (a feed of 40,000 records is tens of MB here, and nothing of it in memory).
"""

from __future__ import annotations

import functools
import json
import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fetcher.bundle import canonical_json
from fetcher.client import check_object
from fetcher.errors import MalformedResponseError
from fetcher.state import Ledger, Statement
from fetcher.stix import JSONDict, is_storage_artefact, object_time, version_key
from shared.durable import sha256_bytes

SCHEMA = """
CREATE TABLE IF NOT EXISTS mirror (
    feed_id TEXT NOT NULL, object_id TEXT NOT NULL, type TEXT NOT NULL, version TEXT NOT NULL,
    sha256 TEXT NOT NULL, stamp TEXT NOT NULL, body BLOB NOT NULL, written TEXT,
    source_ref TEXT, target_ref TEXT,
    PRIMARY KEY (feed_id, object_id));
CREATE INDEX IF NOT EXISTS mirror_pending ON mirror (feed_id, type, object_id)
    WHERE written IS NOT sha256;
CREATE INDEX IF NOT EXISTS mirror_source ON mirror (feed_id, source_ref)
    WHERE source_ref IS NOT NULL;
CREATE INDEX IF NOT EXISTS mirror_target ON mirror (feed_id, target_ref)
    WHERE target_ref IS NOT NULL;
"""

# Each statement runs as few steps as it can. The sqlite3 module lets go of the GIL for every
# step (every row of ``executemany`` or of a result, CPython ``Modules/_sqlite/cursor.c``) and
# must win it back each time; while the listing's threads decode pages, each win can wait for a
# switch interval (``sys.getswitchinterval``, 5 ms). So rows are written many to one statement,
# and sets of rows are read as one aggregate row where the values allow it.

#: Rows per upsert statement, largest first: at most this many statements, each prepared once.
_UPSERT_SIZES = (64, 16, 4, 1)
_UPSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)"


@functools.cache
def _upsert(rows: int) -> str:
    values = ", ".join([_UPSERT_ROW] * rows)  # placeholders only
    return (
        "INSERT INTO mirror (feed_id, object_id, type, version, sha256, stamp, body, written, "  # noqa: S608
        f"source_ref, target_ref) VALUES {values} "
        "ON CONFLICT (feed_id, object_id) DO UPDATE SET type = excluded.type, "
        "version = excluded.version, sha256 = excluded.sha256, stamp = excluded.stamp, "
        "body = excluded.body, source_ref = excluded.source_ref, target_ref = excluded.target_ref"
    )


def _upserts(rows: list[tuple[object, ...]]) -> list[Statement]:
    """Statements that upsert ``rows``, :data:`_UPSERT_SIZES` rows to a statement."""
    statements: list[Statement] = []
    start = 0
    for size in _UPSERT_SIZES:
        while len(rows) - start >= size:
            chunk = rows[start : start + size]
            statements.append((_upsert(size), tuple(value for row in chunk for value in row)))
            start += size
    return statements


# Sets of ids are passed as one JSON array, ``IN (SELECT value FROM json_each(?))`` (SQLite's
# json_each, built in since 3.38): one prepared statement whatever the number of ids. With
# ``IN (?, ?, …)`` every count of ids is a statement of its own, and the sqlite3 module caches
# 128 of them: several MiB on big feeds.

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kept:
    """One object as the mirror keeps it."""

    object_id: str
    type: str
    sha256: str
    stamp: str
    data: bytes  # canonical JSON

    def obj(self) -> JSONDict:
        value: JSONDict = json.loads(self.data)
        return value


@dataclass
class Applied:
    """What applying one page changed."""

    changed: int = 0
    artefacts: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class Record:
    """One object of a page, ready for the mirror: its version key, digest and stored row."""

    object_id: str
    key: str  # version_key|sha256: the greater one is the newer version
    type: str
    sha256: str
    stamp: str
    body: bytes  # canonical JSON, zlib-compressed
    source_ref: str | None
    target_ref: str | None


@dataclass
class Prepared:
    """A page's records with only the newest of each id, and what was left out of it."""

    records: dict[str, Record]
    artefacts: int = 0
    rejected: int = 0


def _clean(obj: JSONDict) -> JSONDict:
    # The server never serves ``_`` keys (KEEP(doc, KEYS(doc, TRUE))); a proxy or another version
    # of it might, and they are storage bookkeeping, not STIX.
    # Joining the keys is one C call; a key that starts with "_" follows a NUL in the result.
    if "\0_" in "\0" + "\0".join(obj):
        return {key: value for key, value in obj.items() if not key.startswith("_")}
    return obj


def prepare(feed_id: str, objects: Iterable[JSONDict], seen_at: str | None) -> Prepared:
    """Check, clean, serialise and digest one page's records, without the database.

    Safe in any thread: the listing's workers call it on the page they fetched, so the consumer
    that writes the mirror (one thread, one connection) only compares and stores.
    """
    result = Prepared({})
    for raw in objects:
        try:
            check_object(raw, path=f"/v1/feeds/{feed_id}/objects/", feed_id=feed_id)
        except MalformedResponseError as exc:
            # One bad record must not stop the feed: it is left out, said once, and the
            # listing goes on past it.
            result.rejected += 1
            logger.error("record left out: %s", exc, extra={"feed_id": feed_id})
            continue
        obj = _clean(raw)
        if is_storage_artefact(obj):
            result.artefacts += 1
            continue
        data = canonical_json(obj)
        sha = sha256_bytes(data)
        key = f"{version_key(obj, seen_at)}|{sha}"
        object_id = str(obj["id"])
        held = result.records.get(object_id)
        if held is not None and key <= held.key:
            continue
        source, target = obj.get("source_ref"), obj.get("target_ref")
        result.records[object_id] = Record(
            object_id,
            key,
            str(obj.get("type")),
            sha,
            object_time(obj) or (seen_at or ""),
            zlib.compress(data, 1),
            source if isinstance(source, str) else None,
            target if isinstance(target, str) else None,
        )
    return result


class Mirror:
    """The mirror table of the fetcher's database (:class:`fetcher.state.Ledger`)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        ledger.executescript(SCHEMA)

    def apply(self, feed_id: str, objects: Iterable[JSONDict], seen_at: str | None) -> Applied:
        """Keep each object whose version is newer than the one kept (inside the ledger's batch)."""
        return self.apply_pages(feed_id, [(objects, seen_at)])

    def apply_pages(
        self, feed_id: str, pages: Iterable[tuple[Iterable[JSONDict], str | None]]
    ) -> Applied:
        """:meth:`apply` for several pages at once (:meth:`apply_prepared` of each prepared)."""
        return self.apply_prepared(feed_id, [prepare(feed_id, objs, seen) for objs, seen in pages])

    def apply_prepared(self, feed_id: str, pages: Iterable[Prepared]) -> Applied:
        """Keep each record newer than the one kept, the pages compared with each other first.

        Writes of an open batch are not visible to its reads, so the pages of one commit must
        be decided together or an older version could follow a newer one of the same commit.
        """
        result = Applied()
        candidates: dict[str, Record] = {}
        for page in pages:
            result.artefacts += page.artefacts
            result.rejected += page.rejected
            for object_id, record in page.records.items():
                held = candidates.get(object_id)
                if held is None or record.key > held.key:
                    candidates[object_id] = record
        if not candidates:
            return result
        kept = self._versions(feed_id, list(candidates))
        rows: list[tuple[object, ...]] = []
        for object_id, record in candidates.items():
            old = kept.get(object_id)
            if old is not None and (old[1] == record.sha256 or old[0] >= record.key):
                continue
            rows.append(
                (
                    feed_id,
                    object_id,
                    record.type,
                    record.key,
                    record.sha256,
                    record.stamp,
                    record.body,
                    record.source_ref,
                    record.target_ref,
                )
            )
        result.changed = len(rows)
        self._ledger.write(_upserts(rows))
        return result

    def _versions(self, feed_id: str, ids: list[str]) -> dict[str, tuple[str, str]]:
        """The kept version and sha256 of each of ``ids`` the mirror holds (one aggregate row)."""
        rows = self._ledger.query(
            "SELECT json_group_object(object_id, json_array(version, sha256)) FROM mirror "
            "WHERE feed_id = ? AND object_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(ids)),
        )
        found: dict[str, list[str]] = json.loads(rows[0][0]) if rows and rows[0][0] else {}
        return {object_id: (version, sha) for object_id, (version, sha) in found.items()}

    def get(self, feed_id: str, ids: Iterable[str]) -> dict[str, Kept]:
        """The kept objects among ``ids`` (ids the mirror does not hold are left out)."""
        rows = self._ledger.query(
            "SELECT object_id, type, sha256, stamp, body FROM mirror "
            "WHERE feed_id = ? AND object_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(list(ids))),
        )
        return {
            str(object_id): Kept(
                str(object_id), str(kind), str(sha), str(stamp), zlib.decompress(body)
            )
            for object_id, kind, sha, stamp, body in rows
        }

    def touching(self, feed_id: str, object_ids: list[str]) -> dict[str, list[str]]:
        """Per id in ``object_ids``: the relationships kept whose source or target it is."""
        ends = json.dumps(object_ids)
        found: dict[str, set[str]] = {}
        for end, object_id in self._ledger.query(
            "SELECT source_ref, object_id FROM mirror WHERE feed_id = ? "
            "AND source_ref IN (SELECT value FROM json_each(?)) UNION ALL "
            "SELECT target_ref, object_id FROM mirror WHERE feed_id = ? "
            "AND target_ref IN (SELECT value FROM json_each(?))",
            (feed_id, ends, feed_id, ends),
        ):
            found.setdefault(str(end), set()).add(str(object_id))
        return {end: sorted(ids) for end, ids in found.items()}

    def forget_written(self, feed_id: str, ids: list[str]) -> None:
        """Count these objects as carried by no published file, so they are written again."""
        if ids:
            self._ledger.write(
                [
                    (
                        "UPDATE mirror SET written = NULL WHERE feed_id = ? "
                        "AND object_id IN (SELECT value FROM json_each(?))",
                        (feed_id, json.dumps(ids)),
                    )
                ]
            )

    def pending(
        self, feed_id: str, *, reports: bool, after: str = "", limit: int = 1000
    ) -> list[str]:
        """Ids of pending objects, in id order from ``after``: reports, or everything else."""
        test = "=" if reports else "!="
        rows = self._ledger.query(
            f"SELECT object_id FROM mirror WHERE feed_id = ? AND type {test} 'report' "  # noqa: S608
            "AND written IS NOT sha256 AND object_id > ? ORDER BY object_id LIMIT ?",
            (feed_id, after, limit),
        )
        return [str(row[0]) for row in rows]

    def mark_written(self, feed_id: str, shas: Mapping[str, str]) -> None:
        """Record that a published file carries these versions (inside the ledger's batch).

        ``shas`` maps object ids to the sha256 of the version the file carries; a row that holds
        another version by now stays pending.
        """
        self._ledger.write(
            [
                (
                    "UPDATE mirror SET written = sha256 WHERE feed_id = ?1 "
                    "AND object_id IN (SELECT key FROM json_each(?2)) "
                    "AND object_id || ' ' || sha256 IN "
                    "(SELECT key || ' ' || value FROM json_each(?2))",
                    (feed_id, json.dumps(dict(shas))),
                )
            ]
        )
