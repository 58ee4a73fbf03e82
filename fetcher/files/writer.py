"""One spool file from the mirror: a report's closure, or a set of feed-level objects.

A report's file holds the report's newest version and, in their newest versions, every object it
refers to (``object_refs``, ``created_by_ref``, ``object_marking_refs`` and the references of
those, but not the contents of a container it names), plus the relationships that have the report
itself as an end. Objects are taken from the mirror, not from the server's ``bundle/`` answer,
which serves members in any stored version and loses members of big reports across pages
(``cyberthreatexchange/server/arango_helpers.py`` ``make_bundle_query``: each direction is
limited before it is sorted).

A report that names objects (``object_refs``, ``created_by_ref``, ``object_marking_refs``) the mirror
does not hold yet is not written: it waits for them (:mod:`fetcher.state.gaps`) until the writer's
``wait_cutoff``, and is then written with what exists.

A :class:`FileWriter` reads, builds, stages (written and fsynced under a temporary name) and
publishes (renamed into place, its folder fsynced) files; it records nothing: its caller records
a file once it is durable (:mod:`fetcher.files.assemble`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from fetcher.errors import FetcherError
from fetcher.files.bundle import BundleBuilder
from fetcher.state.ledger import Ledger
from fetcher.state.mirror import Kept
from fetcher.stix import object_time, references
from shared.durable import publish_bytes
from shared.layout import (
    FEED_OBJECTS_SUBJECT,
    Spool,
    SpoolName,
    relative_path,
)
from shared.signing import SigningKey, signature_of
from shared.timestamps import parse_stix_timestamp


@dataclass
class Built:
    """A file built (and published if it was new): what the fetcher records about it."""

    subject: str
    sha: str
    rel: PurePosixPath
    #: The sha256 of each object the file carries, by id.
    shas: dict[str, str]
    written: bool = False
    objects: int = 0
    #: Objects the report refers to, directly or through its members, that the feed does not hold.
    missing: int = 0
    #: Objects the report names itself that the mirror does not hold (:data:`NAMING_KEYS`).
    lacking: list[str] = field(default_factory=list)
    #: When the report was first found lacking one (None: not before now).
    lacking_since: str | None = None
    #: Not written: the report waits for what it lacks; ``shas`` is what its file would carry.
    waiting: bool = False


#: The properties by which a report names what it is about; it waits for these (fetcher.state.gaps).
NAMING_KEYS = ("object_refs", "created_by_ref", "object_marking_refs")


def named_ids(report: dict[str, object]) -> list[str]:
    """The ids a report names through :data:`NAMING_KEYS`, in order, once each."""
    found: list[str] = []
    for key in NAMING_KEYS:
        value = report.get(key)
        values = value if isinstance(value, list) else [value]
        found.extend(item for item in values if isinstance(item, str))
    return list(dict.fromkeys(found))


@dataclass
class _Group:
    """Objects of one file, read from the mirror."""

    subject: str
    stamp: str
    kept: list[Kept] = field(default_factory=list)
    #: The sha256 of the file the ledger holds for this report (None: none, or not a report).
    known_sha: str | None = None
    missing: int = 0
    lacking: list[str] = field(default_factory=list)
    lacking_since: str | None = None


@dataclass(frozen=True)
class FileWriter:
    """Builds the files of one feed from ``ledger``'s mirror and publishes them into ``spool``'s
    ``incoming/``."""

    ledger: Ledger
    spool: Spool
    feed_id: str
    signing_key: SigningKey | None = None
    #: A report first found lacking a named object after this time (a record time,
    #: :func:`shared.timestamps.format_stix_time`) waits; None: none waits.
    wait_cutoff: str | None = None

    def reports(self, ids: list[str]) -> list[Built]:
        """The files of these reports, each published if its content is new."""
        return [
            self._waiting(group) if self._waits(group) else self._build(group)
            for group in self._report_groups(ids)
        ]

    def _waits(self, group: _Group) -> bool:
        if not group.lacking or self.wait_cutoff is None:
            return False
        return group.lacking_since is None or group.lacking_since > self.wait_cutoff

    @staticmethod
    def _waiting(group: _Group) -> Built:
        shas = {item.object_id: item.sha256 for item in group.kept}
        return Built(
            group.subject,
            "",
            PurePosixPath(),
            shas,
            objects=len(group.kept),
            missing=group.missing,
            lacking=group.lacking,
            lacking_since=group.lacking_since,
            waiting=True,
        )

    def objects(self, ids: list[str]) -> list[Built]:
        """One feed-level file of these objects (none if the mirror holds none of them)."""
        kept = list(self.ledger.mirror.get(self.feed_id, ids).values())
        if not kept:
            return []
        # The spool contract names a file by the newest modified (else created) of what it
        # holds; the listing's time only when nothing in it has either (SCOs).
        times = [object_time(item.obj()) for item in kept]
        stamp = max(times) or max(item.stamp for item in kept)
        return [self._build(_Group(FEED_OBJECTS_SUBJECT, stamp, kept))]

    def _report_groups(self, ids: list[str]) -> list[_Group]:
        """The reports' groups, their closures read a level at a time for all of them."""
        ledger = self.ledger
        mirror = ledger.mirror
        known = mirror.get(self.feed_id, ids)
        reports = [known[report_id] for report_id in ids if report_id in known]
        touching = mirror.touching(self.feed_id, [item.object_id for item in reports])
        refs_of: dict[str, list[str]] = {}
        absent: set[str] = set()
        members = {item.object_id: {item.object_id: item} for item in reports}
        missing: dict[str, set[str]] = {item.object_id: set() for item in reports}
        bodies = {item.object_id: item.obj() for item in reports}
        frontier = {
            report_id: [*references(body), *touching.get(report_id, [])]
            for report_id, body in bodies.items()
        }
        while frontier:
            wanted = {ref for refs in frontier.values() for ref in refs}
            unread = [ref for ref in wanted if ref not in known and ref not in absent]
            found = mirror.get(self.feed_id, unread)
            known.update(found)
            absent.update(ref for ref in unread if ref not in found)
            following: dict[str, list[str]] = {}
            for report_id, refs in frontier.items():
                kept, nxt = members[report_id], []
                for ref in dict.fromkeys(refs):
                    item = known.get(ref)
                    if ref in kept:
                        continue
                    if item is None:
                        missing[report_id].add(ref)
                        continue
                    kept[ref] = item
                    if ref not in refs_of:
                        refs_of[ref] = list(references(item.obj(), follow_contents=False))
                    nxt.extend(refs_of[ref])
                if nxt:
                    following[report_id] = nxt
            frontier = following
        shas = ledger.report_shas(self.feed_id, list(members))
        lacking = {
            report_id: [ref for ref in named_ids(body) if ref not in known]
            for report_id, body in bodies.items()
        }
        since = ledger.gaps.since(self.feed_id, list(lacking))
        return [
            _Group(
                item.object_id,
                item.stamp,
                list(members[item.object_id].values()),
                shas.get(item.object_id),
                missing=len(missing[item.object_id]),
                lacking=lacking[item.object_id],
                lacking_since=since.get(item.object_id),
            )
            for item in reports
        ]

    def _build(self, group: _Group) -> Built:
        """The file's bytes and name; staged and published, durably, if it is new."""
        builder = BundleBuilder()
        for item in group.kept:
            builder.add_canonical(item.data, item.object_id)
        pieces = builder.chunks()
        digest = hashlib.sha256()
        mac = None if self.signing_key is None else self.signing_key.new_mac()
        for piece in pieces:
            digest.update(piece)
            if mac is not None:
                mac.update(piece)
        sha = digest.hexdigest()
        signature = None if mac is None else signature_of(mac)
        when = parse_stix_timestamp(group.stamp) if group.stamp else None
        if when is None:
            raise FetcherError(
                f"{group.subject} has no modified, created or record time", feed_id=self.feed_id
            )
        rel = relative_path(self.feed_id, SpoolName(when, group.subject, sha, signature))
        shas = {item.object_id: item.sha256 for item in group.kept}
        built = Built(
            group.subject,
            sha,
            rel,
            shas,
            objects=len(group.kept),
            missing=group.missing,
            lacking=group.lacking,
            lacking_since=group.lacking_since,
        )
        if group.known_sha != sha:
            path = self.spool.path_in("incoming", rel)
            built.written = publish_bytes(path, pieces)
        return built
