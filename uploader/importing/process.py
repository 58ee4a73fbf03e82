"""One spool file, start to end: admitted (read, settled, signature checked:
:mod:`uploader.importing.admit`), claimed, checked once, imported, its outcome recorded.

:meth:`FileProcessor.process` runs in a worker thread and returns a :class:`Result` for the
scheduler. The file moves forward only: ``incoming/`` → claimed in ``processing/<instance>/`` →
``done/`` with its receipt or ``failed/`` with its reason, or back to ``incoming/`` when a transient
failure is to be retried. Its bytes are read once and parsed once (:func:`uploader.importing.chunking.read_bundle`
checks them and keeps what the split needs).

A feed's next file may start as soon as OpenCTI has accepted this one: the processor reports an
``imported`` result through ``early`` and then moves the file to ``done/`` (the durable moves cost
about as much as the platform calls). A move that fails after the import is retried in place,
never by importing again, so order is kept; if the uploader stops first the file goes back to
``incoming/`` (imported again by the next run, like any file claimed at a crash).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from shared.errors import SpoolError
from shared.layout import Spool
from shared.signing import SigningKey
from uploader.errors import (
    BundleRejected,
    PermanentImportError,
    TransientImportError,
    WorkErrorsError,
)
from uploader.importing.admit import Admission
from uploader.importing.check import SpoolFile, check_stix
from uploader.importing.chunking import Bundle, read_bundle
from uploader.importing.importer import Importer
from uploader.importing.scan import check_bundle
from uploader.importing.works import adopted_work_name, work_name
from uploader.intake.scheduler import Result
from uploader.intake.settle import Settling
from uploader.settings import UploaderSettings
from uploader.spool_ops.claim import ClaimLostError, InstanceLock, claim, release_claim
from uploader.spool_ops.origin import read_origin
from uploader.spool_ops.outcome import (
    Failure,
    Imported,
    ImportReceipt,
    fail_claimed,
    record_done,
)

logger = logging.getLogger(__name__)


class FileProcessor:
    """Takes one file through the rooms of the module docstring; thread-safe, one call per feed."""

    def __init__(
        self,
        spool: Spool,
        importer: Importer,
        lock: InstanceLock,
        settings: UploaderSettings,
        *,
        signing_key: SigningKey | None = None,
        retry_delay: Callable[[int], float],
        early: Callable[[Result], None],
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spool = spool
        self.importer = importer
        self.lock = lock
        self.settings = settings
        #: Masked in every reason file (defence in depth: importers should never echo the token).
        self.secrets = (settings.opencti_token.get_secret_value(),)
        self.retry_delay = retry_delay
        self.early = early
        self.stopping = stopping
        self.settling = Settling(settings.settle_seconds, clock)
        self.admission = Admission(spool, lock.instance, self.settling, signing_key)

    def process_safely(self, feed: str, rel: PurePosixPath, attempts: int) -> Result:
        try:
            return self.process(feed, rel, attempts)
        except Exception:
            # Whatever went wrong (disk full, a bug), the file is not the culprit: put it back
            # and retry later; the process keeps running.
            attempts += 1
            delay = self.retry_delay(attempts)
            logger.exception(
                "unexpected error on %s, retrying in %.1fs",
                rel,
                delay,
                extra={"feed": feed, "file": str(rel)},
            )
            self._release_if_claimed(rel)
            return Result(feed, rel, "retry", delay, attempts)

    def process(self, feed: str, rel: PurePosixPath, attempts: int) -> Result:
        admitted = self.admission.admit(feed, rel, attempts)
        if isinstance(admitted, Result):
            return admitted
        if isinstance(admitted, Failure):
            return self._claim_and_fail(feed, rel, admitted)
        spool_file = admitted
        try:
            claimed = claim(self.spool, self.lock.instance, rel)
        except ClaimLostError:
            return Result(feed, rel, "gone")
        after = os.lstat(claimed)
        if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) != (
            *spool_file.inode,
            spool_file.size,
            spool_file.mtime_ns,
        ):
            # Replaced or written to between our read and our rename: read it again.
            release_claim(self.spool, claimed, rel)
            return Result(feed, rel, "settling", 0.05, attempts)

        try:
            bundle = self._check(spool_file.data)
        except BundleRejected as exc:
            return self._fail(feed, claimed, rel, Failure(exc.kind, str(exc), attempts))
        return self._import(feed, rel, claimed, spool_file, bundle, attempts + 1)

    def _check(self, data: bytes) -> Bundle:
        if not self.settings.strict_stix:
            return read_bundle(data, self.settings.max_push_bytes)
        parsed = check_bundle(data)
        check_stix(parsed)
        return read_bundle(data, self.settings.max_push_bytes, parsed)

    def _import(
        self,
        feed: str,
        rel: PurePosixPath,
        claimed: Path,
        spool_file: SpoolFile,
        bundle: Bundle,
        attempts: int,
    ) -> Result:
        # An adopted file's origin (uploader.spool_ops.origin) stays in incoming/ while the file is claimed.
        origin = read_origin(self.spool, rel)
        work = work_name(spool_file) if origin is None else adopted_work_name(origin, spool_file)
        try:
            receipt = self.importer.import_bundle(work, bundle, origin)
        except TransientImportError as exc:
            release_claim(self.spool, claimed, rel)
            delay = self.retry_delay(attempts)
            logger.warning(
                "import of %s failed (attempt %d), retrying in %.1fs: %s",
                rel.name,
                attempts,
                delay,
                exc,
                extra={"feed": feed, "file": str(rel), "work_id": exc.work_id},
            )
            return Result(feed, rel, "retry", delay, attempts)
        except WorkErrorsError as exc:
            failure = Failure(
                "work-errors", str(exc), attempts, work_id=exc.work_id, platform_errors=exc.errors
            )
            return self._fail(feed, claimed, rel, failure)
        except PermanentImportError as exc:
            return self._fail(
                feed, claimed, rel, Failure("rejected", str(exc), attempts, work_id=exc.work_id)
            )
        # OpenCTI has the file: the feed's next file may start (module docstring).
        self.early(Result(feed, rel, "imported", attempts=attempts))
        return self._finish(feed, rel, claimed, receipt, spool_file.actual_sha256, attempts)

    def _finish(
        self,
        feed: str,
        rel: PurePosixPath,
        claimed: Path,
        receipt: ImportReceipt,
        sha256: str,
        attempts: int,
    ) -> Result:
        """Move an imported file to done/ (:func:`uploader.spool_ops.outcome.record_done`)."""
        kind = record_done(
            self.spool,
            claimed,
            rel,
            Imported(receipt, sha256, attempts),
            instance=self.lock.instance,
            secrets=self.secrets,
            feed=feed,
            retry_delay=self.retry_delay,
            stopping=self.stopping,
        )
        if kind == "stopped":
            return Result(feed, rel, "retry", attempts=attempts, released=True)
        if kind == "done":
            # Per file at debug, so that a run of thousands of files stays readable at info,
            # where failed and waiting files are said.
            logger.debug(
                "imported %s",
                rel.name,
                extra={
                    "feed": feed,
                    "file": str(rel),
                    "work_id": receipt.work_id,
                    "objects": receipt.objects,
                },
            )
        return Result(feed, rel, kind, attempts=attempts if kind != "left" else 0, released=True)

    def _claim_and_fail(self, feed: str, rel: PurePosixPath, failure: Failure) -> Result:
        try:
            claimed = claim(self.spool, self.lock.instance, rel)
        except ClaimLostError:
            return Result(feed, rel, "gone")
        return self._fail(feed, claimed, rel, failure)

    def _fail(self, feed: str, claimed: Path, rel: PurePosixPath, failure: Failure) -> Result:
        kind = fail_claimed(
            self.spool,
            claimed,
            rel,
            failure,
            instance=self.lock.instance,
            secrets=self.secrets,
            feed=feed,
        )
        return Result(feed, rel, kind, attempts=failure.attempts if kind == "failed" else 0)

    def _release_if_claimed(self, rel: PurePosixPath) -> None:
        claimed = self.lock.directory / Path(*rel.parts)
        if claimed.exists() or claimed.is_symlink():
            try:
                release_claim(self.spool, claimed, rel)
            except (SpoolError, OSError) as exc:
                logger.error("cannot put %s back: %s", rel, exc, extra={"file": str(rel)})
