"""Spool files from the mirror: one file per new or changed report, then feed-level files.

A report's file holds the report's newest version and, in their newest versions, every object it
refers to (``object_refs``, ``created_by_ref``, ``object_marking_refs`` and the references of
those, but not the contents of a container it names), plus the relationships that have the report
itself as an end. Objects are taken from the mirror, not from the server's ``bundle/`` answer,
which serves members in any stored version and loses members of big reports across pages
(``cyberthreatexchange/server/arango_helpers.py`` ``make_bundle_query``: each direction is
limited before it is sorted). Every pending object that no report file carried goes into
feed-level files of at most :data:`OBJECTS_PER_FILE` objects.

Bytes are built and staged (written and fsynced under a temporary name) in a pool of threads;
files are published (renamed into place) and recorded in order, one ledger commit per group.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fetcher.bundle import BundleBuilder
from fetcher.errors import FetcherError
from fetcher.mirror import Kept, Mirror
from fetcher.state import Ledger
from fetcher.stix import references
from shared.durable import discard_staged, publish_staged, stage_bytes
from shared.errors import SpoolError
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
    staged: Path | None = None
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
        ids = self.mirror.pending(self.feed_id, reports=True, after=after, limit=REPORTS_AHEAD)
        groups = []
        for report_id in ids:
            group = self._report_group(report_id)
            if group is not None:
                groups.append(group)
        return groups, (ids[-1] if ids else "")

    def _report_group(self, report_id: str) -> _Group | None:
        report = self.mirror.get(self.feed_id, [report_id]).get(report_id)
        if report is None:
            return None
        kept: dict[str, Kept] = {report_id: report}
        wanted = [*references(report.obj()), *self.mirror.touching(self.feed_id, report_id)]
        missing: set[str] = set()
        while wanted:
            fresh = [ref for ref in dict.fromkeys(wanted) if ref not in kept and ref not in missing]
            found = self.mirror.get(self.feed_id, fresh)
            missing.update(ref for ref in fresh if ref not in found)
            wanted = []
            for object_id, item in found.items():
                kept[object_id] = item
                wanted.extend(references(item.obj(), follow_contents=False))
        if missing:
            self.counts.missing_refs += len(missing)
            logger.info(
                "report refers to objects the feed does not hold",
                extra={"feed_id": self.feed_id, "report_id": report_id, "missing": len(missing)},
            )
        known = self.ledger.report_sha(self.feed_id, report_id)
        return _Group(report_id, report.stamp, list(kept.values()), known)

    def _next_objects(self, after: str) -> tuple[list[_Group], str]:
        ids = self.mirror.pending(self.feed_id, reports=False, after=after, limit=OBJECTS_PER_FILE)
        if not ids:
            return [], ""
        kept = list(self.mirror.get(self.feed_id, ids).values())
        stamp = max((item.stamp for item in kept), default="")
        return [_Group(FEED_OBJECTS_SUBJECT, stamp, kept)], ids[-1]

    def _write_all(self, pool: ThreadPoolExecutor, groups: Iterator[list[_Group]]) -> None:
        ahead: list[Future[_Built]] = []
        try:
            for batch in groups:
                futures = [pool.submit(self._build, group) for group in batch]
                ahead.extend(futures)
                with self.ledger.batch():
                    for future in futures:
                        self._publish(future.result())
                        ahead.remove(future)
        finally:
            for future in ahead:
                if future.cancel():
                    continue
                try:
                    built = future.result()
                except (FetcherError, SpoolError, OSError):
                    continue
                if built.staged is not None:
                    discard_staged(built.staged)

    def _build(self, group: _Group) -> _Built:
        """In a pool thread: the file's bytes, its name, and its temp file if it is new."""
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
        if group.known_sha == sha:
            return built
        built.staged = stage_bytes(self.spool.path_in("incoming", rel), pieces)
        return built

    def _publish(self, built: _Built) -> None:
        report = built.subject != FEED_OBJECTS_SUBJECT
        written = False
        if built.staged is not None:
            written = publish_staged(built.staged, self.spool.path_in("incoming", built.rel))
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
