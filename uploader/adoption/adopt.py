"""Adoption: a foreign file (a pycti diode file, a plain STIX 2.1 bundle) published into the spool.

After adoption a file is a spool file like any other, so checks, signing rules, order per feed,
``done/``/``failed/``, receipts, replay, status and metrics are the path every spool file takes.

* **Diode files** are what ``OpenCTIConnectorHelper.send_stix2_bundle`` writes with
  ``CONNECTOR_SEND_TO_DIRECTORY`` (pycti ``connector/opencti_connector_helper.py``; 7.x:
  ``_generate_bundle_filename`` and ``_create_message_bundle``): one JSON line
  ``{"bundle_type": "DIRECTORY_BUNDLE", "applicant_id", "connector": {"id", "name", "type",
  "scope", "auto", "validate_before_import"}, "entities_types", "bundle": {…}, "update"}`` named
  ``<connector name>-<YYYYmmdd-HHMMSS>-<time.time()>.json``. Its bundle goes into the feed folder
  of the connector's id, dated by the epoch in the name (not the mtime, which copies change and
  removable media round), its origin in the ``.source`` sidecar (:mod:`uploader.spool_ops.origin`).
  pycti 7's ``S3_BUNDLE`` payload is the same object and is taken the same way.
* **Plain bundles** (any name) go unchanged into the feed folder ``UPLOADER_ADOPT_FEED_ID``, dated
  by their newest ``modified`` (else ``created``, else the file's mtime).

A file is taken only when complete: never a hidden or ``*.tmp`` name (pycti writes
``<name>.json.tmp`` and renames), its size and mtime the same before and after reading, and its
bytes parsing whole; one that does not parse is waited for until it has not changed for
``settle_seconds``. Its source is removed only after its spool copy and the ledger row are
durable (:mod:`uploader.adoption.ledger`), and never with ``keep`` or when the folder is read-only.
A file that is not JSON or not a bundle is copied into ``failed/`` with a ``.reason`` and left
where it is.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Literal

from shared.durable import makedirs_durable, publish_bytes, sha256_bytes
from shared.layout import (
    DONE,
    FAILED,
    FEED_OBJECTS_SUBJECT,
    INCOMING,
    REASON_SUFFIX,
    Spool,
    SpoolName,
    check_feed_id,
    relative_path,
    sidecar_path,
    walk_bundles,
)
from shared.timestamps import now_stix_time
from uploader.adoption.ledger import AdoptLedger
from uploader.adoption.plan import Plan, RefusedError, plan_of, source_order
from uploader.spool_ops.claim import claim_folders
from uploader.spool_ops.origin import Origin, write_origin
from uploader.spool_ops.outcome import write_sidecar

logger = logging.getLogger(__name__)

Outcome = Literal["adopted", "duplicate", "failed", "waiting", "ignored"]


@dataclass(frozen=True)
class AdoptResult:
    """What became of one source file; ``spool_path`` is ``<state>/<rel>`` in the spool."""

    source: Path
    outcome: Outcome
    spool_path: str | None = None
    reason: str | None = None


class Adopter:
    """Adopts files one at a time into ``spool``; not thread-safe (one adopting thread)."""

    def __init__(
        self,
        spool: Spool,
        ledger: AdoptLedger,
        *,
        feed_id: str,
        settle_seconds: float,
        keep: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.ledger = ledger
        self.feed_id = check_feed_id(feed_id)
        self.settle_seconds = settle_seconds
        self.keep = keep
        self.clock = clock
        self._read_only_noted: set[Path] = set()
        # (path, size, mtime_ns) of files refused or already seen as failed: not read again.
        self._left: set[tuple[str, int, int]] = set()

    def adopt(self, path: Path) -> AdoptResult:
        """Adopt one file (see the module docstring); never raises for the file's content."""
        if path.name.startswith(".") or not path.name.endswith(".json"):
            return AdoptResult(path, "ignored")
        try:
            before = os.lstat(path)
            if not stat.S_ISREG(before.st_mode):
                return AdoptResult(path, "ignored", reason="not a regular file")
            key = (str(path), before.st_size, before.st_mtime_ns)
            if key in self._left:
                return AdoptResult(path, "failed")
            data = path.read_bytes()
            after = os.lstat(path)
        except FileNotFoundError:
            return AdoptResult(path, "ignored", reason="gone")
        except OSError as exc:
            logger.error("cannot read %s: %s", path, exc.strerror or exc, extra={"file": str(path)})
            return AdoptResult(path, "waiting", reason=str(exc))
        if (after.st_size, after.st_mtime_ns, after.st_ino) != (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        ):
            return AdoptResult(path, "waiting", reason="changing")
        digest = sha256_bytes(data)
        known = self.ledger.spool_path(digest)
        if known is not None:
            if known.startswith(f"{FAILED}/"):
                self._left.add(key)
                return AdoptResult(path, "failed", known)
            self._remove_source(path)
            return AdoptResult(path, "duplicate", known)
        try:
            plan = plan_of(path, data, digest, after.st_mtime, self.feed_id)
        except RefusedError as exc:
            if exc.kind == "not-json" and self.clock() - after.st_mtime < self.settle_seconds:
                return AdoptResult(path, "waiting", reason=str(exc))
            spool_path = self._fail(path, data, digest, after.st_mtime, exc)
            self._left.add(key)
            return AdoptResult(path, "failed", spool_path, reason=str(exc))
        rel = relative_path(plan.feed, plan.name)
        spool_path = self._publish(rel, plan)
        self.ledger.record(digest, path.name, spool_path, "adopted")
        self._remove_source(path)
        logger.debug(
            "adopted %s as %s", path.name, spool_path, extra={"file": str(path), "feed": plan.feed}
        )
        return AdoptResult(path, "adopted", spool_path)

    def _publish(self, rel: PurePosixPath, plan: Plan) -> str:
        """Publish into ``incoming/`` unless a crash left this very file in the spool already."""
        existing = self._in_spool(rel)
        if existing is not None:
            return existing
        path = self.spool.path_in(INCOMING, rel)
        makedirs_durable(path.parent)
        # The sidecar first: the processor never sees a bundle without its origin. Publishing
        # fsyncs the folder, which makes both names durable.
        write_origin(path, plan.origin, sync_dir=False)
        publish_bytes(path, plan.data)
        return f"{INCOMING}/{rel}"

    def _in_spool(self, rel: PurePosixPath) -> str | None:
        for state in (INCOMING, DONE, FAILED):
            if self.spool.path_in(state, rel).exists():
                return f"{state}/{rel}"
        for instance in claim_folders(self.spool):
            if (self.spool.processing / instance / rel).exists():
                return f"{INCOMING}/{rel}"
        return None

    def _fail(self, path: Path, data: bytes, digest: str, mtime: float, exc: RefusedError) -> str:
        """Copy a refused file into ``failed/`` with its reason; the source stays where it is."""
        name = SpoolName(datetime.fromtimestamp(mtime, UTC), FEED_OBJECTS_SUBJECT, digest)
        rel = relative_path(self.feed_id, name)
        dst = self.spool.path_in(FAILED, rel)
        makedirs_durable(dst.parent)
        write_sidecar(
            sidecar_path(dst, REASON_SUFFIX),
            {
                "file": str(rel),
                "kind": exc.kind,
                "message": f"{exc} (adopted from {path})",
                "attempts": 0,
                "failed_at": now_stix_time(),
                "work_id": None,
                "instance": "adopt",
                "source": str(path),
            },
        )
        write_origin(dst, Origin(original_name=path.name))
        publish_bytes(dst, data)
        spool_path = f"{FAILED}/{rel}"
        self.ledger.record(digest, path.name, spool_path, "failed")
        logger.error(
            "refused %s: %s; copied to %s, left in place",
            path.name,
            exc,
            spool_path,
            extra={"file": str(path), "kind": exc.kind},
        )
        return spool_path

    def _remove_source(self, path: Path) -> None:
        if self.keep or path.parent in self._read_only_noted:
            return
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self._read_only_noted.add(path.parent)
            logger.warning(
                "%s is read-only: adopted files are left in it (the ledger adopts each once)",
                path.parent,
                extra={"dir": str(path.parent)},
            )


def walk_drop(directory: Path) -> Iterator[Path]:
    """Every non-hidden ``*.json`` below ``directory``, by path, without following symlinked
    folders (the spool's own walk, :func:`shared.layout.walk_bundles`); nothing when
    ``directory`` cannot be listed."""
    try:
        found = [entry.path for entry in walk_bundles(directory)]
    except OSError:
        return
    yield from sorted(found)


@dataclass
class AdoptSummary:
    adopted: int = 0
    duplicate: int = 0
    failed: int = 0
    waiting: list[Path] | None = None


def adopt_folder(
    adopter: Adopter, directory: Path, *, patience: float, sleep: Callable[[float], None]
) -> AdoptSummary:
    """Adopt every file of ``directory`` once; files being written are waited for (``patience``
    seconds without any of them finishing, after which they are reported as still waiting)."""
    summary = AdoptSummary()
    pending = sorted(walk_drop(directory), key=source_order)
    quiet_since = time.monotonic()
    while pending:
        waiting: list[Path] = []
        for path in pending:
            result = adopter.adopt(path)
            if result.outcome == "waiting":
                waiting.append(path)
            elif result.outcome in ("adopted", "duplicate", "failed"):
                setattr(summary, result.outcome, getattr(summary, result.outcome) + 1)
                quiet_since = time.monotonic()
        if not waiting or time.monotonic() - quiet_since > patience:
            summary.waiting = waiting
            break
        pending = waiting
        sleep(0.2)
    return summary
