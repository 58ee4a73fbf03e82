"""Spool files from the mirror: one file per new or changed report, then feed-level files.

A report's file holds the report's newest version and, in their newest versions, every object it
refers to (``object_refs``, ``created_by_ref``, ``object_marking_refs`` and the references of
those, but not the contents of a container it names), plus the relationships that have the report
itself as an end. Objects are taken from the mirror, not from the server's ``bundle/`` answer,
which serves members in any stored version and loses members of big reports across pages
(``cyberthreatexchange/server/arango_helpers.py`` ``make_bundle_query``: each direction is
limited before it is sorted). Every pending object that no report file carried goes into
feed-level files of at most :data:`OBJECTS_PER_FILE` objects.

Each file is read from the mirror, built, staged (written and fsynced under a temporary name) and
published (renamed into place, folder fsynced) by a pool thread, through that thread's own
read-only connection to the fetcher's database (:class:`_Readers`): the reads, the JSON and the
fsyncs of several files overlap. The main thread only lists what is pending and records the files
after they are published, in order, one durable commit per batch.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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
#: Report files recorded in one durable commit (a commit is an fsync of the database's log).
REPORTS_PER_COMMIT = 64
#: Reports one pool task reads and writes: their closures are read a level at a time together.
REPORTS_PER_TASK = 32
#: Batches in the pool besides the one being recorded (each report file holds its bytes there).
BATCHES_AHEAD = 1


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
    #: Objects the report refers to that the feed does not hold.
    missing: int = 0


@dataclass
class _Group:
    """Objects of one file, read from the mirror in the calling thread."""

    subject: str
    stamp: str
    kept: list[Kept] = field(default_factory=list)
    #: The sha256 of the file the ledger holds for this report (None: none, or not a report).
    known_sha: str | None = None
    missing: int = 0


class _Readers:
    """A read-only connection to the fetcher's database for each pool thread, closed at the end.

    SQLite in WAL mode lets them read the last commit while the main connection records files
    (https://sqlite.org/wal.html#concurrency). Everything they read was committed by the listing
    before the first of them opened; the records the main thread adds concern other objects.
    """

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Ledger] = []

    def get(self) -> tuple[Mirror, Ledger]:
        mine: tuple[Mirror, Ledger] | None = getattr(self._local, "reader", None)
        if mine is None:
            ledger = Ledger(self._state_dir, read_only=True)
            with self._lock:
                self._opened.append(ledger)
            mine = (Mirror(ledger, create=False), ledger)
            self._local.reader = mine
        return mine

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for ledger in opened:
            ledger.close()


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
        readers = _Readers(self.ledger.path.parent)
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="ctx-assemble") as pool:
                self._write_all(self._report_batches(pool, readers))
                self._write_all(self._object_batches(pool, readers))
        finally:
            readers.close()
        return self.counts

    def _pending(self, *, reports: bool, limit: int) -> Iterator[list[str]]:
        """Ids of pending reports, or of every other pending object, ``limit`` at a time."""
        after = ""
        while ids := self.mirror.pending(self.feed_id, reports=reports, after=after, limit=limit):
            after = ids[-1]
            yield ids

    def _report_batches(
        self, pool: ThreadPoolExecutor, readers: _Readers
    ) -> Iterator[list[Future[list[_Built]]]]:
        """Pending reports a commit's worth at a time, handed to the pool a task at a time."""
        for ids in self._pending(reports=True, limit=REPORTS_PER_COMMIT):
            yield [
                pool.submit(self._reports_task, readers, ids[at : at + REPORTS_PER_TASK])
                for at in range(0, len(ids), REPORTS_PER_TASK)
            ]

    def _object_batches(
        self, pool: ThreadPoolExecutor, readers: _Readers
    ) -> Iterator[list[Future[list[_Built]]]]:
        """Pending objects that no report file carried, a feed-level file at a time."""
        for ids in self._pending(reports=False, limit=OBJECTS_PER_FILE):
            yield [pool.submit(self._objects_task, readers, ids)]

    def _reports_task(self, readers: _Readers, ids: list[str]) -> list[_Built]:
        """In a pool thread: the files of these reports, built and published if they are new."""
        mirror, ledger = readers.get()
        return [self._build(group) for group in self._report_groups(mirror, ledger, ids)]

    def _objects_task(self, readers: _Readers, ids: list[str]) -> list[_Built]:
        mirror, _ledger = readers.get()
        kept = list(mirror.get(self.feed_id, ids).values())
        if not kept:
            return []
        stamp = max((item.stamp for item in kept), default="")
        return [self._build(_Group(FEED_OBJECTS_SUBJECT, stamp, kept))]

    def _report_groups(self, mirror: Mirror, ledger: Ledger, ids: list[str]) -> list[_Group]:
        """The reports' groups, their closures read a level at a time for all of them."""
        known = mirror.get(self.feed_id, ids)
        reports = [known[report_id] for report_id in ids if report_id in known]
        touching = mirror.touching(self.feed_id, [item.object_id for item in reports])
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
        return [
            _Group(
                item.object_id,
                item.stamp,
                list(members[item.object_id].values()),
                shas.get(item.object_id),
                missing=len(missing[item.object_id]),
            )
            for item in reports
        ]

    def _write_all(self, batches: Iterator[list[Future[list[_Built]]]]) -> None:
        """Record each batch's files, in order, in one commit, while later batches are built.

        At most :data:`BATCHES_AHEAD` batches wait in the pool besides the one being recorded.
        """
        waiting: deque[list[Future[list[_Built]]]] = deque()
        try:
            for batch in batches:
                waiting.append(batch)
                if len(waiting) > BATCHES_AHEAD:
                    self._record_batch(waiting.popleft())
            while waiting:
                self._record_batch(waiting.popleft())
        finally:
            # Files already published but not recorded are found in place by the next pass.
            for batch in waiting:
                for future in batch:
                    future.cancel()

    def _record_batch(self, batch: list[Future[list[_Built]]]) -> None:
        with self.ledger.batch():
            for future in batch:
                for built in future.result():
                    self._record(built)

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
        built = _Built(
            group.subject, sha, rel, shas, objects=len(group.kept), missing=group.missing
        )
        if group.known_sha != sha:
            path = self.spool.path_in("incoming", rel)
            built.written = publish_staged(stage_bytes(path, pieces), path)
        return built

    def _record(self, built: _Built) -> None:
        report = built.subject != FEED_OBJECTS_SUBJECT
        written = built.written
        if built.missing:
            self.counts.missing_refs += built.missing
            logger.info(
                "report refers to objects the feed does not hold",
                extra={
                    "feed_id": self.feed_id,
                    "report_id": built.subject,
                    "missing": built.missing,
                },
            )
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
