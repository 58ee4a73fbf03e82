"""The newest version of every object of a feed, kept on disk beside the cursors.

The listing serves every stored version of every object, in no order a client can rely on, some
of them twice (:mod:`fetcher.ctx.walk`). The mirror makes that one answer per STIX id: a record
replaces the one kept only when its version is newer (:func:`fetcher.stix.version_key`), so an
older version, an unchanged re-upload or a record served again changes nothing, whichever order
they arrive in. Report files and feed-level files are built from it once the listing is read
(:mod:`fetcher.files.assemble`), so a report's file holds the newest version of everything it names.

Table ``mirror(feed_id, object_id, type, version, sha256, stamp, body, written, source_ref,
target_ref)``: ``body`` is the object's canonical JSON; ``written`` the ``sha256`` of the
version last carried by a published file (NULL: none yet). An object whose ``written`` differs
from its ``sha256`` is pending. It is on disk so that memory does not grow with the feed (a feed
of 40,000 records is tens of MB here, and nothing of it in memory).

Bodies are stored as they are. STIX objects as CTX serves them are a few hundred bytes each,
which zlib shrinks by about a third, while compressing one costs about as much as everything
else the fetcher does with a record (zlib sets up a fresh ~300 KB deflate state per call). State
files written by earlier versions hold zlib-compressed bodies; they are read as such (a zlib
stream starts with 0x78, canonical JSON with ``{``) and replaced as newer versions arrive.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from fetcher.ctx.answers import check_object
from fetcher.errors import MalformedResponseError
from fetcher.state.connection import Connection, Statement
from fetcher.stix import (
    JSONDict,
    canonical_json,
    is_storage_artefact,
    object_time,
    served_position,
    version_key,
)
from shared.durable import sha256_bytes

_UPSERT = (
    "INSERT INTO mirror (feed_id, object_id, type, version, sha256, stamp, body, written, "
    "source_ref, target_ref) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) "
    "ON CONFLICT (feed_id, object_id) DO UPDATE SET type = excluded.type, "
    "version = excluded.version, sha256 = excluded.sha256, stamp = excluded.stamp, "
    "body = excluded.body, source_ref = excluded.source_ref, target_ref = excluded.target_ref"
)
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
    #: Ids the mirror did not hold before.
    new_ids: list[str] = field(default_factory=list)


def _clean(obj: JSONDict) -> JSONDict:
    # The server never serves ``_`` keys (KEEP(doc, KEYS(doc, TRUE))); a proxy or another version
    # of it might, and they are storage bookkeeping, not STIX.
    # Joining the keys is one C call; a key that starts with "_" follows a NUL in the result.
    if "\0_" in "\0" + "\0".join(obj):
        return {key: value for key, value in obj.items() if not key.startswith("_")}
    return obj


def _listing_time(served: str) -> str:
    """The listing's ``next`` of a page's served position ('' for the page-number style)."""
    head = served.split("|", 1)[0]
    return "" if head.startswith("#") else head


def _body(stored: bytes) -> bytes:
    """The canonical JSON of a stored body (compressed by earlier versions of the fetcher)."""
    return stored if stored[:1] == b"{" else zlib.decompress(stored)


class Mirror:
    """The mirror table of the fetcher's database (:class:`fetcher.state.ledger.Ledger`)."""

    def __init__(self, db: Connection) -> None:
        self._db = db
        self._present = False

    def apply_pages(self, feed_id: str, pages: Iterable[tuple[Iterable[JSONDict], str]]) -> Applied:
        """Keep each object whose version is newer than the one kept (inside the ledger's batch),
        the objects of all ``pages`` compared with each other before the mirror.

        Each page comes with where the listing served it (:attr:`fetcher.ctx.walk.Step.served`);
        with its place on the page that orders versions ``modified`` cannot tell apart
        (:func:`fetcher.stix.served_position`). Writes of an open batch are not visible to its
        reads, so the pages of one commit must be decided together or an older version could
        follow a newer one of the same commit.
        """
        result = Applied()
        candidates: dict[str, tuple[str, str, JSONDict, bytes, str]] = {}
        for objects, page in pages:
            for index, raw in enumerate(objects):
                try:
                    check_object(raw, path=f"/v1/feeds/{feed_id}/objects/", feed_id=feed_id)
                except MalformedResponseError as exc:
                    # One bad record must not stop the feed: it is left out, said once, and the
                    # listing goes on past it.
                    logger.error("record left out: %s", exc, extra={"feed_id": feed_id})
                    continue
                obj = _clean(raw)
                if is_storage_artefact(obj):
                    continue
                data = canonical_json(obj)
                sha = sha256_bytes(data)
                key = f"{version_key(obj, served_position(page, index))}|{sha}"
                object_id = str(obj["id"])
                held = candidates.get(object_id)
                if held is None or key > held[0]:
                    candidates[object_id] = (key, sha, obj, data, page)
        if not candidates:
            return result
        kept = self._versions(feed_id, list(candidates))
        statements: list[Statement] = []
        for object_id, (key, sha, obj, data, page) in candidates.items():
            old = kept.get(object_id)
            if old is not None and (old[1] == sha or old[0] >= key):
                continue
            if old is None:
                result.new_ids.append(object_id)
            source, target = obj.get("source_ref"), obj.get("target_ref")
            statements.append(
                (
                    _UPSERT,
                    (
                        feed_id,
                        object_id,
                        str(obj.get("type")),
                        key,
                        sha,
                        # Without modified or created: the listing's time, the best there is.
                        object_time(obj) or _listing_time(page),
                        data,
                        source if isinstance(source, str) else None,
                        target if isinstance(target, str) else None,
                    ),
                )
            )
        result.changed = len(statements)
        self._db.run(statements)
        return result

    def _versions(self, feed_id: str, ids: list[str]) -> dict[str, tuple[str, str]]:
        rows = self._db.rows(
            "SELECT object_id, version, sha256 FROM mirror WHERE feed_id = ? "
            "AND object_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(ids)),
        )
        return {str(object_id): (str(version), str(sha)) for object_id, version, sha in rows}

    def get(self, feed_id: str, ids: Iterable[str]) -> dict[str, Kept]:
        """The kept objects among ``ids`` (ids the mirror does not hold are left out)."""
        rows = self._db.rows(
            "SELECT object_id, type, sha256, stamp, body FROM mirror "
            "WHERE feed_id = ? AND object_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(list(ids))),
        )
        return {
            str(object_id): Kept(str(object_id), str(kind), str(sha), str(stamp), _body(body))
            for object_id, kind, sha, stamp, body in rows
        }

    def _exists(self) -> bool:
        """Whether the table is there: a read-only open of a state file older than schema 3, whose
        fetcher never read a page, has none."""
        self._present = self._present or self._db.has_table("mirror")
        return self._present

    def written(self, feed_id: str, ids: Iterable[str]) -> dict[str, str]:
        """The sha256 of the version a published file carries, of each of ``ids`` that has one."""
        if not self._exists():
            return {}
        rows = self._db.rows(
            "SELECT object_id, written FROM mirror WHERE feed_id = ? AND written IS NOT NULL "
            "AND object_id IN (SELECT value FROM json_each(?))",
            (feed_id, json.dumps(list(ids))),
        )
        return {str(object_id): str(sha) for object_id, sha in rows}

    def touching(self, feed_id: str, object_ids: list[str]) -> dict[str, list[str]]:
        """Per id in ``object_ids``: the relationships kept whose source or target it is."""
        ends = json.dumps(object_ids)
        found: dict[str, set[str]] = {}
        for end, object_id in self._db.rows(
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
            self._db.run(
                [
                    (
                        "UPDATE mirror SET written = NULL WHERE feed_id = ? "
                        "AND object_id IN (SELECT value FROM json_each(?))",
                        (feed_id, json.dumps(ids)),
                    )
                ]
            )

    def pending(self, feed_id: str, *, reports: bool, limit: int = 1000) -> Iterator[list[str]]:
        """Ids of pending objects, ``limit`` at a time: reports, or everything else by type.

        Each batch starts after the last row of the one before, in the order of the index of
        pending rows (``type``, then ``rowid``), so a batch is a seek in that index, never a sort
        of every pending row of the feed; what the caller leaves pending, such as a report that
        waits for objects it names, is not served again.
        """
        kind, after = ("report", 0) if reports else ("", 0)
        while True:
            rows = self._db.rows(
                "SELECT object_id, type, rowid FROM mirror WHERE feed_id = ? AND type = ? "
                "AND written IS NOT sha256 AND rowid > ? ORDER BY rowid LIMIT ?",
                (feed_id, kind, after, limit),
            )
            if not reports and len(rows) < limit:
                rows += self._db.rows(
                    "SELECT object_id, type, rowid FROM mirror WHERE feed_id = ? AND type > ? "
                    "AND type != 'report' AND written IS NOT sha256 ORDER BY type, rowid LIMIT ?",
                    (feed_id, kind, limit - len(rows)),
                )
            if not rows:
                return
            kind, after = str(rows[-1][1]), int(rows[-1][2])
            yield [str(row[0]) for row in rows]

    def mark_written(self, feed_id: str, shas: Mapping[str, str]) -> None:
        """Record that a published file carries these versions (inside the ledger's batch).

        ``written`` takes the version the file carries: an object whose kept version has moved
        on since stays pending (``written`` differs from its ``sha256``).
        """
        self._db.run(
            [
                (
                    "UPDATE mirror SET written = ? WHERE feed_id = ? AND object_id = ?",
                    (sha, feed_id, object_id),
                )
                for object_id, sha in shas.items()
            ]
        )
