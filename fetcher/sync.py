"""One pass: for each configured feed, new and updated reports and orphan objects into the spool.

Per feed (issue 2, "What a pass does"):

1. reports updated since the ``reports`` cursor → one report bundle file each (report + related
   objects from the ``bundle/`` endpoint, every page), fetched in parallel;
2. every object updated since the ``objects`` cursor that no written bundle carries in its current
   content → feed-level bundles ``<newest modified>_objects_<sha>.json`` of at most
   :data:`OBJECTS_PER_FILE` objects.

A cursor is saved only after every file it covers is published; a failing feed keeps its cursors.

Both listings are cursor chains: one page at a time, each ask waiting for the previous answer. With
``concurrency`` above 1 they are read ahead in their own threads (:class:`_ReadAhead`), so the
objects listing of step 2 runs while step 1 fetches bundles and the next page of reports is there
when a batch is done; the pages are still *handled* in order, step 2 after step 1, so what the
ledger says when an orphan is judged is unchanged. ``make bench`` (issue 6) measured the objects
chain alone as 56% of a default pass of 200 reports.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from fetcher.bundle import BundleBuilder, canonical_json
from fetcher.client import CTXClient, JSONDict, Subscription
from fetcher.errors import FeedNotSubscribedError, FetcherError, MalformedResponseError
from fetcher.listing import Batch, batch_of, walk_objects
from fetcher.segments import SegmentedWalk
from fetcher.state import Ledger
from shared.durable import (
    discard_staged,
    publish_bytes,
    publish_staged,
    remove_stale_temps,
    sha256_bytes,
    stage_bytes,
)
from shared.errors import SpoolError
from shared.layout import (
    FEED_OBJECTS_SUBJECT,
    Spool,
    SpoolName,
    check_feed_id,
    check_stix_id,
    parse_stix_timestamp,
    relative_path,
)
from shared.signing import SigningKey, signature_of

logger = logging.getLogger(__name__)

OBJECTS_PER_FILE = 1000
# A temp file this old belongs to a write that died: publishing one file takes milliseconds.
STALE_TEMP_SECONDS = 15 * 60
REPORTS_CURSOR = "reports"
OBJECTS_CURSOR = "objects"


@dataclass
class FeedResult:
    """What one pass did for one feed; ``error`` is set when the feed failed."""

    feed_id: str
    reports_written: int = 0
    reports_unchanged: int = 0
    objects_files_written: int = 0
    objects_written: int = 0
    error: FetcherError | SpoolError | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        text = (
            f"reports written {self.reports_written}, unchanged {self.reports_unchanged}, "
            f"objects bundles written {self.objects_files_written} "
            f"({self.objects_written} objects)"
        )
        return text if self.ok else f"FAILED: {self.error} ({text})"


Progress = Callable[[FeedResult], None]


def strip_bookkeeping(obj: JSONDict) -> JSONDict:
    """``obj`` without top-level keys starting with ``_``.

    CTX adds ``_record_created``/``_record_modified`` etc. They are not STIX and change when CTX
    re-indexes without any change of content, so keeping them would make unchanged reports look new
    and defeat dedup. Everything else (custom observables, ``extensions``) stays untouched.
    """
    return {key: value for key, value in obj.items() if not key.startswith("_")}


def object_sha(obj: JSONDict) -> str:
    return sha256_bytes(canonical_json(obj))


def _object_time(obj: JSONDict) -> tuple[int, datetime] | None:
    """(rank, time): STIX ``modified``/``created`` rank above CTX's record time.

    SCOs carry no modified/created in STIX 2.1; CTX's record time stands in for them only when no
    object of a file has a STIX time.
    """
    for rank, key in ((1, "modified"), (1, "created"), (0, "_record_modified")):
        raw = obj.get(key)
        if isinstance(raw, str):
            try:
                return rank, parse_stix_timestamp(raw)
            except ValueError:
                continue
    return None


#: Pages of a listing read ahead of the one being handled (50 objects each: a few MB at most).
READ_AHEAD_PAGES = 64


class _ReadAhead:
    """Runs a listing walk in a thread, at most ``depth`` pages ahead of the consumer.

    Iterating yields the walk's batches in order and re-raises the walk's error where it occurred;
    :meth:`close` stops the thread at its next page (the consumer failed or is done).
    """

    _END = object()

    def __init__(self, walk: Iterator[Batch], depth: int, name: str) -> None:
        self._walk = walk
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self._walk:
                if not self._put(batch):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)
            return
        self._put(self._END)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            yield batch_of(item)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


#: Pages of reports whose bundles are being fetched while an earlier page is written.
REPORT_PAGES_AHEAD = 1


@dataclass
class _Prepared:
    """A report bundle built in a pool thread: staged on disk if new, else kept in memory."""

    report_id: str
    sha: str
    rel: PurePosixPath
    object_shas: dict[str, str]
    staged: Path | None = None
    pieces: list[bytes] | None = None


@dataclass
class _PageOfReports:
    batch: Batch
    reports: list[JSONDict]
    futures: list[Future[_Prepared]]


def _cutting(walk: Iterator[Batch], objects: SegmentedWalk) -> Iterator[Batch]:
    for batch in walk:
        if batch.safe_cursor is not None:
            objects.cut_at(batch.safe_cursor)
        yield batch


class FeedSync:
    """One pass over one feed."""

    def __init__(
        self,
        client: CTXClient,
        ledger: Ledger,
        spool: Spool,
        feed_id: str,
        *,
        concurrency: int,
        progress: Progress | None = None,
        signing_key: SigningKey | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.spool = spool
        self.feed_id = check_feed_id(feed_id)
        self.concurrency = concurrency
        self.signing_key = signing_key
        self.result = FeedResult(self.feed_id)
        self._progress = progress
        # Bundles prepared (maybe staged on disk) whose files are not published yet.
        self._unpublished: set[Future[_Prepared]] = set()

    def _tick(self) -> None:
        if self._progress is not None:
            self._progress(self.result)

    def run(self) -> FeedResult:
        """Run the pass; errors end up in ``result.error``, never raised."""
        objects_walk: SegmentedWalk | Iterator[Batch] | None = None
        try:
            objects_walk = self._objects_walk()
            self._reports(objects_walk if isinstance(objects_walk, SegmentedWalk) else None)
            self._orphans(objects_walk)
        except (FetcherError, SpoolError) as exc:
            if isinstance(exc, FetcherError) and exc.feed_id is None:
                exc.feed_id = self.feed_id
            self.result.error = exc
        finally:
            if isinstance(objects_walk, SegmentedWalk):
                logger.debug(
                    "objects listing read in %d segment(s)",
                    objects_walk.segments,
                    extra={"feed_id": self.feed_id},
                )
                objects_walk.close()
        return self.result

    def _objects_walk(self) -> SegmentedWalk | Iterator[Batch]:
        """The objects listing from its cursor: segments in parallel if concurrency > 1."""
        cursor = self.ledger.cursor(self.feed_id, OBJECTS_CURSOR)
        if self.concurrency <= 1:
            return walk_objects(self.client, self.feed_id, cursor)
        return SegmentedWalk(
            self.client,
            self.feed_id,
            cursor,
            types=None,
            workers=self.concurrency,
            depth=READ_AHEAD_PAGES,
            budget=READ_AHEAD_PAGES,
        )

    def _reports_walk(self, objects: SegmentedWalk | None) -> _ReadAhead | Iterator[Batch]:
        """The reports listing from its cursor; read ahead in a thread if concurrency > 1.

        Each page's cursor read ahead also starts a segment of the objects listing there
        (:mod:`fetcher.segments`).
        """
        cursor = self.ledger.cursor(self.feed_id, REPORTS_CURSOR)
        walk = walk_objects(self.client, self.feed_id, cursor, types="report")
        if self.concurrency <= 1:
            # CONCURRENCY=1 means one request at a time, listings included.
            return walk
        if objects is not None:
            walk = _cutting(walk, objects)
        return _ReadAhead(walk, READ_AHEAD_PAGES, "ctx-reports-listing")

    @property
    def _objects_path(self) -> str:
        return f"/v1/feeds/{self.feed_id}/objects/"

    def _name(
        self, pieces: Sequence[bytes], modified: datetime, subject: str
    ) -> tuple[str, PurePosixPath]:
        """The SHA-256 and content-addressed relative path of bundle bytes given in pieces.

        With a signing key the name also carries the bytes' HMAC (issue 7). Dedup is unaffected:
        the ledger keys on the content's SHA-256, so turning signing on later writes no signed
        duplicates of unchanged reports.
        """
        digest = hashlib.sha256()
        mac = None if self.signing_key is None else self.signing_key.new_mac()
        for piece in pieces:
            digest.update(piece)
            if mac is not None:
                mac.update(piece)
        sha = digest.hexdigest()
        signature = None if mac is None else signature_of(mac)
        return sha, relative_path(self.feed_id, SpoolName(modified, subject, sha, signature))

    def _publish(self, data: bytes, modified: datetime, subject: str) -> tuple[str, str, bool]:
        """Publish bundle bytes under their name (:meth:`_name`): (sha256, relative path, new?)."""
        sha, rel = self._name([data], modified, subject)
        written = publish_bytes(self.spool.path_in("incoming", rel), data)
        return sha, str(rel), written

    def _reports(self, objects: SegmentedWalk | None) -> None:
        walk = self._reports_walk(objects)
        self._unpublished.clear()
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="ctx-bundle") as pool:
                try:
                    self._report_batches(pool, walk)
                finally:
                    if isinstance(walk, _ReadAhead):
                        walk.close()
        finally:
            # After a failure: files staged by bundles that were never published (the pool has
            # finished every task by now).
            for future in self._unpublished:
                if future.done() and not future.cancelled() and future.exception() is None:
                    staged = future.result().staged
                    if staged is not None:
                        discard_staged(staged)

    def _report_batches(self, pool: ThreadPoolExecutor, walk: _ReadAhead | Iterator[Batch]) -> None:
        # The bundles of the next page are asked for before this page's files are written, so
        # the pool never waits for the writes (issue 6: with fsyncs, writing a page took as long
        # as fetching it). Files are still written strictly in listing order.
        ahead: collections.deque[_PageOfReports] = collections.deque()
        try:
            for batch in walk:
                reports = [obj for obj in batch.objects if obj["type"] == "report"]
                futures = [
                    pool.submit(
                        self._prepare,
                        report,
                        # A hint: the ledger as committed now (earlier pages may still change it).
                        self.ledger.report_sha(self.feed_id, str(report["id"])),
                    )
                    for report in reports
                ]
                self._unpublished.update(futures)
                ahead.append(_PageOfReports(batch, reports, futures))
                if len(ahead) > REPORT_PAGES_AHEAD:
                    self._write_page(ahead.popleft())
            while ahead:
                self._write_page(ahead.popleft())
        finally:
            for page in ahead:
                for future in page.futures:
                    future.cancel()

    def _write_page(self, page: _PageOfReports) -> None:
        # The page's ledger entries and its cursor go in one commit (Ledger.batch).
        with self.ledger.batch():
            try:
                for future in page.futures:
                    prepared = future.result()
                    self._unpublished.discard(future)
                    self._write_report(prepared)
            finally:
                for future in page.futures:
                    future.cancel()
            if page.batch.safe_cursor is not None:
                self.ledger.set_cursor(self.feed_id, REPORTS_CURSOR, page.batch.safe_cursor)

    def _prepare(self, report: JSONDict, known_sha: str | None) -> _Prepared:
        """In a pool thread: fetch the report's bundle, build its file, stage it if it is new.

        The bytes are written and fsynced here, in parallel; :meth:`_write_report` only renames
        them into place, in listing order (issue 6: the main thread's fsyncs were the pass's
        bottleneck). ``known_sha`` is the ledger's entry when the page was read: a bundle equal to
        it is most likely unchanged and is not staged.
        """
        report_id = check_stix_id(report["id"])
        modified = report.get("modified")
        if not isinstance(modified, str):
            raise MalformedResponseError(
                f"report {report_id} has no modified", path=self._objects_path, feed_id=self.feed_id
            )
        try:
            when = parse_stix_timestamp(modified)
        except ValueError:
            raise MalformedResponseError(
                f"report {report_id} has a bad modified",
                path=self._objects_path,
                feed_id=self.feed_id,
            ) from None
        # Each page of the answer is reduced to canonical bytes as it arrives: the objects of a
        # 40 MB bundle never exist as dicts all at once (issue 6, big bundle).
        builder = BundleBuilder()
        for page in self.client.bundle_pages(self.feed_id, report_id):
            for obj in page.objects:
                # The listing's version of the report is the one the cursor covers; the bundle
                # answer may lack the report or carry another version of it (REFERENCE §1).
                if obj.get("id") != report_id:
                    builder.add(strip_bookkeeping(obj))
        builder.add(strip_bookkeeping(report))
        object_shas = builder.object_shas
        pieces = builder.chunks()
        sha, rel = self._name(pieces, when, report_id)
        if sha == known_sha:
            return _Prepared(report_id, sha, rel, object_shas, pieces=pieces)
        staged = stage_bytes(self.spool.path_in("incoming", rel), pieces)
        return _Prepared(report_id, sha, rel, object_shas, staged=staged)

    def _write_report(self, prepared: _Prepared) -> None:
        """Publish one prepared report bundle unless the ledger has it; record it."""
        if self.ledger.report_sha(self.feed_id, prepared.report_id) == prepared.sha:
            if prepared.staged is not None:
                discard_staged(prepared.staged)
            self.result.reports_unchanged += 1
            self._tick()
            return
        path = self.spool.path_in("incoming", prepared.rel)
        if prepared.staged is not None:
            written = publish_staged(prepared.staged, path)
        else:
            # The hint said unchanged but an earlier page of this pass recorded another version.
            assert prepared.pieces is not None
            written = publish_bytes(path, b"".join(prepared.pieces))
        rel = str(prepared.rel)
        self.ledger.record(
            self.feed_id, prepared.object_shas, report=(prepared.report_id, prepared.sha, rel)
        )
        if written:
            self.result.reports_written += 1
            logger.info("report bundle written", extra={"feed_id": self.feed_id, "file": rel})
        else:
            # Published earlier but not recorded (a crash in between): same name, nothing new.
            self.result.reports_unchanged += 1
        self._tick()

    def _orphans(self, walk: SegmentedWalk | Iterator[Batch]) -> None:
        pending: dict[str, tuple[JSONDict, tuple[int, datetime] | None]] = {}
        for batch in walk:
            for obj in batch.objects:
                # Reports go through their own walk and cursor, as report bundles.
                if obj["type"] == "report":
                    continue
                when = _object_time(obj)
                clean = strip_bookkeeping(obj)
                if self.ledger.object_sha(self.feed_id, clean["id"]) == object_sha(clean):
                    pending.pop(clean["id"], None)
                    continue
                pending.pop(clean["id"], None)
                pending[clean["id"]] = (clean, when)
            if batch.final or len(pending) >= OBJECTS_PER_FILE:
                self._flush(pending)
            if not pending and batch.safe_cursor is not None:
                self.ledger.set_cursor(self.feed_id, OBJECTS_CURSOR, batch.safe_cursor)

    def _flush(self, pending: dict[str, tuple[JSONDict, tuple[int, datetime] | None]]) -> None:
        items = list(pending.values())
        for start in range(0, len(items), OBJECTS_PER_FILE):
            chunk = items[start : start + OBJECTS_PER_FILE]
            objects = [obj for obj, _ in chunk]
            stamps = [when for _, when in chunk if when is not None]
            if not stamps:
                raise MalformedResponseError(
                    "objects without any timestamp", path=self._objects_path, feed_id=self.feed_id
                )
            builder = BundleBuilder.of(objects)
            data = b"".join(builder.chunks())
            _, rel, written = self._publish(data, max(stamps)[1], FEED_OBJECTS_SUBJECT)
            self.ledger.record(self.feed_id, builder.object_shas)
            if written:
                self.result.objects_files_written += 1
                self.result.objects_written += len(objects)
                logger.info(
                    "objects bundle written",
                    extra={"feed_id": self.feed_id, "file": rel, "objects": len(objects)},
                )
            self._tick()
        pending.clear()


def run_pass(
    client: CTXClient,
    ledger: Ledger,
    spool: Spool,
    feed_ids: tuple[str, ...],
    *,
    concurrency: int,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    signing_key: SigningKey | None = None,
) -> list[FeedResult]:
    """One pass over every configured feed; each feed's failure stays that feed's.

    When ``stop`` is set the pass ends after the current feed; the feeds left have no result.
    """
    try:
        subscriptions: dict[str, Subscription] | None = {
            sub.feed_id: sub for sub in client.subscriptions()
        }
        failure: FetcherError | None = None
    except FetcherError as exc:
        subscriptions, failure = None, exc
    results = []
    for feed_id in feed_ids:
        # Temp files of a fetcher killed mid-write (issue 5): removed before they travel anywhere.
        stale = remove_stale_temps(spool.incoming / check_feed_id(feed_id), STALE_TEMP_SECONDS)
        if stale:
            logger.info("removed stale temp files", extra={"feed_id": feed_id, "count": stale})
        if stop is not None and stop.is_set():
            logger.info("stop requested; feeds left for the next pass", extra={"feed_id": feed_id})
            break
        if subscriptions is None:
            result = FeedResult(feed_id, error=failure)
        else:
            sub = subscriptions.get(feed_id)
            if sub is None or not sub.active:
                status = None if sub is None else sub.status
                message = (
                    "not among the team's subscriptions (see `ctx-fetcher feeds`)"
                    if sub is None
                    else f"the subscription to {sub.name!r} is {status!r}, not active"
                )
                result = FeedResult(
                    feed_id, error=FeedNotSubscribedError(message, feed_id=feed_id, status=status)
                )
            else:
                result = FeedSync(
                    client,
                    ledger,
                    spool,
                    feed_id,
                    concurrency=concurrency,
                    progress=progress,
                    signing_key=signing_key,
                ).run()
        if result.ok:
            logger.info("feed done: %s", result.summary(), extra={"feed_id": feed_id})
        else:
            logger.error("feed failed: %s", result.error, extra={"feed_id": feed_id})
        results.append(result)
    return results
