"""Whether a file in ``incoming/`` may be claimed now, before anything is moved.

In order: a safe relative name outside any symlinked folder, a regular file (a symlink is
refused), no older file of its feed claimed by another uploader, bytes that have settled and match
the SHA-256 in the name (a copy in progress is waited for, :mod:`uploader.intake.settle`), and,
with ``SPOOL_SIGNING_KEY``, a good signature. :meth:`Admission.admit` answers with the file read
once, a :class:`~uploader.intake.scheduler.Result` (not now, or never), or the
:class:`~uploader.spool_ops.outcome.Failure` the file is to be claimed and failed with.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import PurePosixPath

from shared.errors import UnsafeNameError
from shared.layout import INCOMING, Spool
from shared.signing import SigningKey
from uploader.errors import BundleRejected
from uploader.importing.check import (
    SpoolFile,
    check_signature,
    read_spool_file,
    under_symlinked_folder,
)
from uploader.intake.scheduler import Result
from uploader.intake.settle import Settling
from uploader.spool_ops.claim import older_claim_elsewhere, reclaim_instance
from uploader.spool_ops.outcome import Failure

logger = logging.getLogger(__name__)

# Seconds between two looks at another uploader importing an older file of the same feed.
_WAIT_FOR_OTHER = 0.5


class Admission:
    """The checks of the module docstring for the uploader ``instance``; thread-safe."""

    def __init__(
        self,
        spool: Spool,
        instance: str,
        settling: Settling,
        signing_key: SigningKey | None,
    ) -> None:
        self.spool = spool
        self.instance = instance
        self.settling = settling
        self.signing_key = signing_key
        self._unverified_noted = threading.Event()

    def admit(self, feed: str, rel: PurePosixPath, attempts: int) -> SpoolFile | Result | Failure:
        """The file to claim, what to tell the scheduler instead, or why to fail it."""
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
            return Failure("symlink", "symbolic links are never followed")
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
            return Failure(exc.kind, str(exc))
        if not spool_file.digest_ok:
            return self._settle_or_fail(feed, rel, spool_file, attempts)
        self.settling.forget(rel)
        # Only now that the bytes match the SHA-256 in the name (a copy in progress has settled)
        # is the signature checked: a mismatch then is final.
        refusal = self._signature_refusal(feed, rel, spool_file, attempts)
        return spool_file if refusal is None else refusal

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
        blocker = older_claim_elsewhere(self.spool, rel, self.instance)
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
    ) -> Result | Failure:
        """A digest mismatch: a copy in progress until the file stops changing, then corrupt."""
        waited, first = self.settling.mismatch(
            rel, spool_file.size, spool_file.mtime_ns, spool_file.actual_sha256
        )
        settle = self.settling.settle_seconds
        if waited >= settle:
            return Failure(
                "corrupt",
                f"SHA-256 does not match the name after {waited:.1f}s without change",
                attempts,
                expected_sha256=spool_file.name.sha256,
                actual_sha256=spool_file.actual_sha256,
            )
        if first:
            logger.info(
                "digest of %s does not match its name yet; waiting for it to settle",
                rel.name,
                extra={"feed": feed, "file": str(rel)},
            )
        return Result(feed, rel, "settling", min(1.0, max(0.05, settle - waited)), attempts)
