"""Outcomes of one claimed file: ``done/`` with a receipt, ``failed/`` with a reason.

Sidecars are ``<file name>.receipt`` and ``<file name>.reason`` (e.g. ``…_<sha256>.json.receipt``)
beside the bundle. Order, so that a crash at any point loses nothing and never leaves a bundle in
``done/`` without its receipt:

1. if the destination already exists: identical bytes → the claim copy is a duplicate, replace
   the sidecar and drop the copy; different bytes → never overwrite (``done`` turns into a
   ``conflict`` failure);
2. write the sidecar atomically (temp + fsync + rename);
3. move the bundle with :func:`shared.durable.move_no_replace`, whose fsync of the destination
   folder makes the sidecar's rename and the bundle's link durable together;
4. an adopted file's ``.source`` (:mod:`uploader.spool_ops.origin`) follows it out of ``incoming/``.

A crash after 2 leaves the bundle claimed: it is reclaimed into ``incoming/`` and imported again
(OpenCTI upserts), and its new sidecar replaces the stale one. A crash inside 3 (after the link,
before the unlink) leaves the same bytes in both places: reclaim drops the claim copy. A move to
``done/`` that fails (disk full) is tried again in place, never by importing again
(:func:`record_done`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from shared.durable import fsync_dir, move_no_replace, same_bytes, write_atomic
from shared.errors import DestinationExistsError, SpoolError
from shared.layout import (
    DONE,
    FAILED,
    INCOMING,
    REASON_SUFFIX,
    RECEIPT_SUFFIX,
    Spool,
    sidecar_path,
)
from shared.timestamps import now_stix_time
from uploader.spool_ops.claim import release_claim
from uploader.spool_ops.origin import carry_origin

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportReceipt:
    """What OpenCTI gave back for one file: written to done/ beside it."""

    work_id: str
    connector_id: str
    pushes: int
    objects: int


@dataclass(frozen=True)
class Imported:
    """What a file goes to ``done/`` with: the content of its ``.receipt`` file."""

    receipt: ImportReceipt
    sha256: str
    attempts: int


def write_sidecar(path: Path, document: dict[str, Any], *, sync_dir: bool = True) -> None:
    """Atomically and durably write (or replace) a JSON sidecar.

    :func:`shared.durable.write_atomic`, not ``publish_bytes``: that one keeps an existing file of
    the same size, and a stale receipt from an interrupted earlier attempt must be replaced. With
    ``sync_dir=False`` the caller fsyncs the folder after its next step there.
    """
    write_atomic(path, sidecar_bytes(document), sync_dir=sync_dir)


def sidecar_bytes(document: dict[str, Any]) -> bytes:
    """``json.dumps(document, indent=2, sort_keys=True)`` plus a newline, for flat documents fast.

    ``indent`` makes json use its pure-Python encoder, a tenth of a millisecond per file on the
    upload path; sidecars hold only scalars, whose indented form is the compact one.
    """
    if not document or any(isinstance(value, dict | list) for value in document.values()):
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
    lines = ",\n".join(
        f"  {json.dumps(key)}: {json.dumps(document[key])}" for key in sorted(document)
    )
    return ("{\n" + lines + "\n}\n").encode("utf-8")


@dataclass(frozen=True)
class Failure:
    """Why a file goes to ``failed/``: the content of its ``.reason`` file."""

    kind: str
    message: str
    attempts: int = 0
    work_id: str | None = None
    expected_sha256: str | None = None
    actual_sha256: str | None = None
    #: The errors OpenCTI's workers reported on the file's work (``work.errors``: ``timestamp``,
    #: ``message``, ``source``), when it was accepted but not every object was ingested.
    platform_errors: tuple[dict[str, Any], ...] = ()


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _place(claimed: Path, dst: Path, sidecar: Path, document: dict[str, Any]) -> None:
    """Steps 1-3 of the module docstring; raises DestinationExistsError on different bytes."""
    if _exists(dst):
        if not same_bytes(claimed, dst):
            raise DestinationExistsError(f"{dst.name} already exists with different bytes", dst)
        write_sidecar(sidecar, document)
        claimed.unlink()
        fsync_dir(claimed.parent)
        return
    # Two fsyncs per file instead of four: the sidecar's bytes are fsynced before its
    # rename, and the one fsync of the folder after the bundle's link makes the sidecar's rename
    # and the link durable together. Journaled filesystems commit a folder's entries in the order
    # they were made, so the bundle never survives a crash without its sidecar. The claim folder
    # is not fsynced: a claimed copy that a crash brings back beside the moved bundle is dropped
    # by reclaim, which finds the same bytes in done/ or failed/ (claim.release_claim).
    write_sidecar(sidecar, document, sync_dir=False)
    move_no_replace(claimed, dst, sync_source=False)


def mark_done(
    spool: Spool, claimed: Path, rel: PurePosixPath, imported: Imported, *, instance: str
) -> Path:
    """Move an accepted file to ``done/<rel>`` with its receipt; return the done path.

    Raises :class:`DestinationExistsError` if ``done/<rel>`` holds different bytes.
    """
    dst = spool.path_in(DONE, rel)
    receipt = imported.receipt
    document = {
        "file": str(rel),
        "work_id": receipt.work_id,
        "connector_id": receipt.connector_id,
        "pushes": receipt.pushes,
        "objects": receipt.objects,
        "imported_at": now_stix_time(),
        "instance": instance,
        "sha256": imported.sha256,
        "attempts": imported.attempts,
    }
    _place(claimed, dst, sidecar_path(dst, RECEIPT_SUFFIX), document)
    carry_origin(spool, rel, INCOMING, DONE)
    # A reason left without its bundle by a crash during an earlier failing attempt would claim
    # the file failed: it is stale now.
    failed = spool.path_in(FAILED, rel)
    reason = sidecar_path(failed, REASON_SUFFIX)
    # The reason is looked for first: it is almost never there (one syscall per file).
    if _exists(reason) and not _exists(failed):
        with contextlib.suppress(FileNotFoundError):
            reason.unlink()
    return dst


def mark_failed(
    spool: Spool, claimed: Path, rel: PurePosixPath, failure: Failure, *, instance: str
) -> Path:
    """Move a refused file to ``failed/<rel>`` with its reason; return the failed path.

    Raises :class:`DestinationExistsError` if ``failed/<rel>`` holds different bytes.
    """
    dst = spool.path_in(FAILED, rel)
    document: dict[str, Any] = {
        "file": str(rel),
        "kind": failure.kind,
        "message": failure.message,
        "attempts": failure.attempts,
        "failed_at": now_stix_time(),
        "work_id": failure.work_id,
        "instance": instance,
    }
    if failure.expected_sha256 is not None:
        document["sha256_expected"] = failure.expected_sha256
    if failure.actual_sha256 is not None:
        document["sha256_actual"] = failure.actual_sha256
    if failure.platform_errors:
        document["platform_errors"] = list(failure.platform_errors)
    _place(claimed, dst, sidecar_path(dst, REASON_SUFFIX), document)
    carry_origin(spool, rel, INCOMING, FAILED)
    return dst


def fail_claimed(
    spool: Spool,
    claimed: Path,
    rel: PurePosixPath,
    failure: Failure,
    *,
    instance: str,
    secrets: tuple[str, ...],
    feed: str,
) -> Literal["failed", "left"]:
    """:func:`mark_failed` with the secrets masked, logged; ``left`` when it cannot be done.

    A file whose ``failed/`` place holds different bytes, or whose name leaves no room for a
    ``.reason`` (a name near the 255-byte limit: retrying could never succeed), goes back to
    ``incoming/`` and is left alone for the rest of the run.
    """
    message = failure.message
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    failure = replace(failure, message=message)
    ctx = {"feed": feed, "file": str(rel), "kind": failure.kind}
    try:
        mark_failed(spool, claimed, rel, failure, instance=instance)
    except DestinationExistsError:
        logger.error(
            "cannot fail %s: failed/ already holds different bytes; left in incoming/",
            rel.name,
            extra=ctx,
        )
        release_claim(spool, claimed, rel)
        return "left"
    except SpoolError as exc:
        cause = exc.__cause__
        if not (isinstance(cause, OSError) and cause.errno == errno.ENAMETOOLONG):
            raise
        logger.error(
            "refused %s: %s; the name is too long for a reason file, left in incoming/",
            rel.name,
            failure.message,
            extra=ctx,
        )
        release_claim(spool, claimed, rel)
        return "left"
    logger.error("refused %s: %s", rel.name, failure.message, extra=ctx)
    return "failed"


def record_done(
    spool: Spool,
    claimed: Path,
    rel: PurePosixPath,
    imported: Imported,
    *,
    instance: str,
    secrets: tuple[str, ...],
    feed: str,
    retry_delay: Callable[[int], float],
    stopping: threading.Event,
) -> Literal["done", "failed", "left", "stopped"]:
    """:func:`mark_done` for an imported file, tried again until it works.

    ``done``; ``failed`` or ``left`` (:func:`fail_claimed`) when ``done/`` holds different bytes;
    ``stopped`` when the uploader stops first: the claimed file then goes back to ``incoming/``
    with the run's other claims, and the next run imports it again. Never asks for the file to be
    imported again before that: a newer file of the feed may be importing already.
    """
    ctx = {"feed": feed, "file": str(rel), "work_id": imported.receipt.work_id}
    tries = 0
    while True:
        if tries and not os.path.lexists(claimed):
            # An earlier try moved it and failed on a later step (a stale reason's removal).
            return "done"
        try:
            mark_done(spool, claimed, rel, imported, instance=instance)
        except DestinationExistsError as exc:
            failure = Failure(
                "conflict", f"done/ already holds different bytes: {exc}", imported.attempts
            )
            return fail_claimed(
                spool, claimed, rel, failure, instance=instance, secrets=secrets, feed=feed
            )
        except Exception as exc:  # noqa: BLE001 - disk full, EIO: the file is not at fault
            tries += 1
            delay = retry_delay(tries)
            logger.error(
                "imported %s, but recording it failed (%s); trying again in %.1fs",
                rel.name,
                exc,
                delay,
                extra=ctx,
            )
            if stopping.wait(delay):
                logger.error(
                    "stopping before %s could be moved to done/: it goes back to incoming/ "
                    "and the next run imports it again",
                    rel.name,
                    extra=ctx,
                )
                return "stopped"
            continue
        return "done"
