"""One spool file, start to end: read, settle, signature, claim, check once, import, outcome.

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
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath

from shared.errors import DestinationExistsError, SpoolError, UnsafeNameError
from shared.layout import INCOMING, Spool
from shared.signing import SigningKey
from shared.timestamps import format_stix_time
from uploader.errors import (
    BundleRejected,
    PermanentImportError,
    TransientImportError,
    WorkErrorsError,
)
from uploader.importing.check import (
    SpoolFile,
    check_signature,
    check_stix,
    read_spool_file,
    under_symlinked_folder,
)
from uploader.importing.chunking import Bundle, read_bundle
from uploader.importing.importer import Importer
from uploader.importing.scan import check_bundle
from uploader.intake.scheduler import Result
from uploader.intake.settle import Settling
from uploader.settings import UploaderSettings
from uploader.spool_ops.claim import (
    ClaimLostError,
    InstanceLock,
    claim,
    older_claim_elsewhere,
    reclaim_instance,
    release_claim,
)
from uploader.spool_ops.origin import Origin, read_origin
from uploader.spool_ops.outcome import Failure, ImportReceipt, fail_claimed, mark_done

logger = logging.getLogger(__name__)

# Seconds between two looks at another uploader importing an older file of the same feed.
_WAIT_FOR_OTHER = 0.5


def work_name(feed_id: str, spool_file: SpoolFile) -> str:
    """The OpenCTI work name of a file: says the feed and the report (or feed objects) it holds."""
    modified = spool_file.name.modified.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"CTX {feed_id} {spool_file.name.subject} ({modified})"


def adopted_work_name(origin: Origin, spool_file: SpoolFile) -> str:
    """An adopted file's work name: diode-import's ``<connector name> run @ <time>`` (its
    ``_process_bundle``), with the time from the file's name and the original file name."""
    when = format_stix_time(spool_file.name.modified)
    who = origin.connector.name if origin.connector is not None else "Adopted bundle"
    return f"{who} run @ {when} ({origin.original_name})"


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
        self.signing_key = signing_key
        #: Masked in every reason file (defence in depth: importers should never echo the token).
        self.secrets = (settings.opencti_token.get_secret_value(),)
        self.retry_delay = retry_delay
        self.early = early
        self.stopping = stopping
        self.clock = clock
        self.settling = Settling(settings.settle_seconds, clock)
        self._unverified_noted = threading.Event()

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
        ctx = {"feed": feed, "file": str(rel)}
        try:
            src = self.spool.path_in(INCOMING, rel)
        except UnsafeNameError as exc:
            logger.error("left in incoming/: %s", exc, extra=ctx)
            return Result(feed, rel, "left")
        if under_symlinked_folder(self.spool.incoming, rel):
            logger.error("left in incoming/: inside a symlinked folder (never followed)", extra=ctx)
            return Result(feed, rel, "left")
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return Result(feed, rel, "gone")
        if stat.S_ISLNK(st.st_mode):
            return self._claim_and_fail(
                feed, rel, Failure("symlink", "symbolic links are never followed")
            )
        if not stat.S_ISREG(st.st_mode):
            logger.error("left in incoming/: not a regular file", extra=ctx)
            return Result(feed, rel, "left")
        blocked = self._older_claim_elsewhere(feed, rel, attempts)
        if blocked is not None:
            return blocked
        wait = self.settling.wait_before_reading(rel, st.st_size, st.st_mtime_ns)
        if wait is not None:
            return Result(feed, rel, "settling", wait, attempts)
        try:
            spool_file = read_spool_file(src, rel)
        except FileNotFoundError:
            return Result(feed, rel, "gone")
        except BundleRejected as exc:
            return self._claim_and_fail(feed, rel, Failure(exc.kind, str(exc)))
        if not spool_file.digest_ok:
            return self._settle_or_fail(feed, rel, spool_file, attempts)
        self.settling.forget(rel)
        # Only now that the bytes match the SHA-256 in the name (a copy in progress has settled)
        # is the signature checked: a mismatch then is final.
        refusal = self._signature_refusal(feed, rel, spool_file, attempts)
        if refusal is not None:
            return self._claim_and_fail(feed, rel, refusal)

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
        try:
            if origin is None:
                receipt = self.importer.import_bundle(
                    work_name(spool_file.feed_id, spool_file), bundle
                )
            else:
                receipt = self.importer.import_bundle(
                    adopted_work_name(origin, spool_file), bundle, origin
                )
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
        """Move an imported file to done/ (or failed/ on a conflict), retrying until it works.

        Never raises and never imports again: a newer file of the feed may be importing already.
        """
        ctx = {"feed": feed, "file": str(rel), "work_id": receipt.work_id}
        tries = 0
        while True:
            if tries and not os.path.lexists(claimed):
                # An earlier try moved it and failed on a later step (a stale reason's removal).
                return Result(feed, rel, "done", attempts=attempts, released=True)
            try:
                mark_done(
                    self.spool,
                    claimed,
                    rel,
                    receipt,
                    instance=self.lock.instance,
                    sha256=sha256,
                    attempts=attempts,
                )
            except DestinationExistsError as exc:
                failure = Failure(
                    "conflict", f"done/ already holds different bytes: {exc}", attempts
                )
                return replace(self._fail(feed, claimed, rel, failure), released=True)
            except Exception as exc:  # noqa: BLE001 - disk full, EIO: the file is not at fault
                tries += 1
                delay = self.retry_delay(tries)
                logger.error(
                    "imported %s, but recording it failed (%s); trying again in %.1fs",
                    rel.name,
                    exc,
                    delay,
                    extra=ctx,
                )
                if self.stopping.wait(delay):
                    logger.error(
                        "stopping before %s could be moved to done/: it goes back to incoming/ "
                        "and the next run imports it again",
                        rel.name,
                        extra=ctx,
                    )
                    return Result(feed, rel, "retry", attempts=attempts, released=True)
                continue
            # Per file at debug, so that a run of thousands of files stays readable at info, where
            # failed and waiting files are said.
            logger.debug(
                "imported %s",
                rel.name,
                extra={**ctx, "objects": receipt.objects},
            )
            return Result(feed, rel, "done", attempts=attempts, released=True)

    def _signature_refusal(
        self, feed: str, rel: PurePosixPath, spool_file: SpoolFile, attempts: int
    ) -> Failure | None:
        """Why a complete file's signature is refused (``unsigned``, ``bad-signature``), or None."""
        key = self.signing_key
        if key is None:
            if spool_file.name.signature is not None and not self._unverified_noted.is_set():
                self._unverified_noted.set()
                logger.info(
                    "signed files seen but no SPOOL_SIGNING_KEY is set: signatures are not "
                    "being verified",
                    extra={"feed": feed, "file": str(rel)},
                )
            return None
        try:
            check_signature(key, spool_file)
        except BundleRejected as exc:
            return Failure(exc.kind, str(exc), attempts)
        return None

    def _older_claim_elsewhere(self, feed: str, rel: PurePosixPath, attempts: int) -> Result | None:
        """Wait while another uploader imports an older file of this feed (order across uploaders)."""
        blocker = older_claim_elsewhere(self.spool, rel, self.lock.instance)
        if blocker is None:
            return None
        holder, older = blocker
        if reclaim_instance(self.spool, holder) is not None:
            # It had died: its files are back in incoming/, the older one goes first.
            return Result(feed, rel, "wait", 0.0, attempts, rescan=True)
        logger.debug(
            "waiting for uploader %s to finish the older %s",
            holder,
            older.name,
            extra={"feed": feed, "file": str(rel)},
        )
        return Result(feed, rel, "wait", _WAIT_FOR_OTHER, attempts)

    def _settle_or_fail(
        self, feed: str, rel: PurePosixPath, spool_file: SpoolFile, attempts: int
    ) -> Result:
        """A digest mismatch: a copy in progress until the file stops changing, then corrupt."""
        waited, first = self.settling.mismatch(
            rel, spool_file.size, spool_file.mtime_ns, spool_file.actual_sha256
        )
        settle = self.settings.settle_seconds
        if waited >= settle:
            return self._claim_and_fail(
                feed,
                rel,
                Failure(
                    "corrupt",
                    f"SHA-256 does not match the name after {waited:.1f}s without change",
                    attempts,
                    expected_sha256=spool_file.name.sha256,
                    actual_sha256=spool_file.actual_sha256,
                ),
            )
        if first:
            logger.info(
                "digest of %s does not match its name yet; waiting for it to settle",
                rel.name,
                extra={"feed": feed, "file": str(rel)},
            )
        return Result(feed, rel, "settling", min(1.0, max(0.05, settle - waited)), attempts)

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
