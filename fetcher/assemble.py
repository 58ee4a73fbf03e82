"""Spool files from the mirror: one file per new or changed report, then feed-level files.

A report's file holds the report's newest version and, in their newest versions, every object it
refers to (``object_refs``, ``created_by_ref``, ``object_marking_refs`` and the references of
those, but not the contents of a container it names), plus the relationships that have the report
itself as an end. Objects are taken from the mirror, not from the server's ``bundle/`` answer,
which serves members in any stored version and loses members of big reports across pages
(``cyberthreatexchange/server/arango_helpers.py`` ``make_bundle_query``: each direction is
limited before it is sorted). Every pending object that no report file carried goes into
feed-level files of at most :data:`OBJECTS_PER_FILE` objects.

Files are built, staged (written and fsynced under a temporary name) and published (renamed into
place, folder fsynced) in a pool of threads while the main thread reads the next batch from the
mirror; the ledger records them after they are published, in order, one commit per batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from fetcher.bundle import BundleBuilder
from fetcher.errors import FetcherError
from fetcher.mirror import Kept, Mirror
from fetcher.state import Ledger
from fetcher.stix import references
from shared.durable import publish_staged, stage_bytes
from shared.layout import (
    FEED_OBJECTS_SUBJECT,
    Spool,
    SpoolName,
    parse_stix_timestamp,
    relative_path,
)
from shared.signing import SigningKey, signature_of

logger = logging.getLogger(__name__)

OBJECTS_PER_FILE = 1000
#: Reports whose files are built ahead of the one being published (each holds its bytes).
REPORTS_AHEAD = 32


@dataclass
class Counts:
    """What assembling wrote for one feed."""

    reports_written: int = 0
    reports_unchanged: int = 0
    objects_files_written: int = 0
    objects_written: int = 0
    missing_refs: int = 0


@dataclass
class _Built:
    subject: str
    sha: str
    rel: PurePosixPath
    shas: dict[str, str]
    written: bool = False
    objects: int = 0


@dataclass
class _Group:
    """Objects of one file, read from the mirror in the calling thread."""

    subject: str
    stamp: str
    kept: list[Kept] = field(default_factory=list)
    #: The sha256 of the file the ledger holds for this report (None: none, or not a report).
    known_sha: str | None = None


class Assembler:
    """Writes the pending files of one feed. Call :meth:`run` once, after the listing is read."""

    def __init__(
        self,
        mirror: Mirror,
        ledger: Ledger,
        spool: Spool,
        feed_id: str,
        *,
        concurrency: int,
        signing_key: SigningKey | None = None,
        progress: Callable[[Counts], None] | None = None,
    ) -> None:
        self.mirror = mirror
        self.ledger = ledger
        self.spool = spool
        self.feed_id = feed_id
        self.concurrency = max(1, concurrency)
        self.signing_key = signing_key
        self.counts = Counts()
        self._progress = progress

    def run(self) -> Counts:
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="ctx-assemble") as pool:
            self._write_all(pool, _batches(self._next_reports))
            self._write_all(pool, _batches(self._next_objects))
        return self.counts

    def _next_reports(self, after: str) -> tuple[list[_Group], str]:
        """The next reports' groups, their closures read a level at a time for all of them."""
        ids = self.mirror.pending(self.feed_id, reports=True, after=after, limit=REPORTS_AHEAD)
        if not ids:
            return [], ""
        known = self.mirror.get(self.feed_id, ids)
        reports = [known[report_id] for report_id in ids if report_id in known]
        touching = self.mirror.touching(self.feed_id, [item.object_id for item in reports])
        refs_of: dict[str, list[str]] = {}
        absent: set[str] = set()
        members = {item.object_id: {item.object_id: item} for item in reports}
        missing: dict[str, set[str]] = {item.object_id: set() for item in reports}
        frontier = {
            item.object_id: [*references(item.obj()), *touching.get(item.object_id, [])]
            for item in reports
        }
        while frontier:
            wanted = {ref for refs in frontier.values() for ref in refs}
            unread = [ref for ref in wanted if ref not in known and ref not in absent]
            found = self.mirror.get(self.feed_id, unread)
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
        shas = self.ledger.report_shas(self.feed_id, list(members))
        groups = []
        for item in reports:
            if missing[item.object_id]:
                self.counts.missing_refs += len(missing[item.object_id])
                logger.info(
                    "report refers to objects the feed does not hold",
                    extra={
                        "feed_id": self.feed_id,
                        "report_id": item.object_id,
                        "missing": len(missing[item.object_id]),
                    },
                )
            group = list(members[item.object_id].values())
            groups.append(_Group(item.object_id, item.stamp, group, shas.get(item.object_id)))
        return groups, ids[-1]

    def _next_objects(self, after: str) -> tuple[list[_Group], str]:
        ids = self.mirror.pending(self.feed_id, reports=False, after=after, limit=OBJECTS_PER_FILE)
        if not ids:
            return [], ""
        kept = list(self.mirror.get(self.feed_id, ids).values())
        stamp = max((item.stamp for item in kept), default="")
        return [_Group(FEED_OBJECTS_SUBJECT, stamp, kept)], ids[-1]

    def _write_all(self, pool: ThreadPoolExecutor, batches: Iterator[list[_Group]]) -> None:
        """Build and publish a batch in the pool while the next one is read from the mirror.

        The ledger records each batch's files in order, in one commit, after they are published.
        """
        ahead: list[Future[_Built]] = []
        try:
            batch = next(batches, None)
            while batch is not None:
                futures = [pool.submit(self._build, group) for group in batch]
                ahead = futures
                batch = next(batches, None)
                with self.ledger.batch():
                    for future in futures:
                        self._record(future.result())
                ahead = []
        finally:
            # Files already published but not recorded are found in place by the next pass.
            for future in ahead:
                future.cancel()

    def _build(self, group: _Group) -> _Built:
        """In a pool thread: the file's bytes and name; staged and published if it is new."""
        builder = BundleBuilder()
        for item in group.kept:
            builder.add_canonical(item.data, item.object_id, item.sha256)
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
        built = _Built(group.subject, sha, rel, shas, objects=len(group.kept))
        if group.known_sha != sha:
            path = self.spool.path_in("incoming", rel)
            built.written = publish_staged(stage_bytes(path, pieces), path)
        return built

    def _record(self, built: _Built) -> None:
        report = built.subject != FEED_OBJECTS_SUBJECT
        written = built.written
        if report:
            self.ledger.record_report(self.feed_id, built.subject, built.sha, str(built.rel))
            if written:
                self.counts.reports_written += 1
                logger.info(
                    "report bundle written", extra={"feed_id": self.feed_id, "file": str(built.rel)}
                )
            else:
                self.counts.reports_unchanged += 1
        elif written:
            self.counts.objects_files_written += 1
            self.counts.objects_written += built.objects
            logger.info(
                "objects bundle written",
                extra={"feed_id": self.feed_id, "file": str(built.rel), "objects": built.objects},
            )
        self.mirror.mark_written(self.feed_id, built.shas)
        if self._progress is not None:
            self._progress(self.counts)


def _batches(read: Callable[[str], tuple[list[_Group], str]]) -> Iterator[list[_Group]]:
    """Groups read from the mirror a batch at a time, each batch after the last one's ids."""
    after = ""
    while True:
        groups, last = read(after)
        if not last:
            return
        after = last
        if groups:
            yield groups
