"""``prune``: retention of ``done/``.

Only ``done/`` is ever pruned: its files reached OpenCTI, while a file anywhere else may be the only
copy of data the platform has not got yet. (The diode-import connector's directory retention,
``DiodeImport._process_directory`` in OpenCTI-Platform/connectors
``external-import/diode-import/src/diode_import.py``, removes every file older than the retention,
imported or not; this one does not.)
``incoming/``, ``processing/`` and ``failed/`` are never touched. A file's age is the
``imported_at`` of its receipt, or its modification time when the receipt is missing or unreadable.
The bundle is removed before its receipt, so a crash in between never leaves a bundle in ``done/``
without a receipt; date folders left empty are removed too. The fetcher keeps its dedup ledger in
its own state, so pruning never makes it write a file again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.durable import fsync_dir
from shared.errors import SpoolError, UnsafeNameError
from shared.layout import (
    RECEIPT_SUFFIX,
    Spool,
    parse_relative_path,
    sidecar_path,
    walk_bundles,
)
from shared.timestamps import parse_stix_timestamp
from uploader.spool_ops.origin import source_path

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(?P<amount>\d+)\s*(?P<unit>[smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a whole number and one unit, ``45s``, ``90m``, ``12h`` or ``30d``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text[:40]!r} is not a duration: use a whole number and s, m, h or d (e.g. 30d, 12h)"
        )
    return float(int(match["amount"]) * _UNIT_SECONDS[match["unit"]])


@dataclass(frozen=True)
class Pruned:
    """One file of ``done/`` old enough to go: its path and bytes (bundle + receipt)."""

    rel: PurePosixPath
    bytes: int

    @property
    def display(self) -> str:
        return f"done/{self.rel}"


def _imported_at(receipt: Path) -> float | None:
    try:
        document = json.loads(receipt.read_text(encoding="utf-8"))
        return parse_stix_timestamp(str(document["imported_at"])).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def candidates(spool: Spool, older_than: float, now: float | None = None) -> list[Pruned]:
    """The files of ``done/`` imported more than ``older_than`` seconds before ``now``."""
    now = time.time() if now is None else now
    found = []
    for entry in walk_bundles(spool.done):
        if entry.is_symlink:
            continue
        try:
            parse_relative_path(entry.relative)
            st = os.lstat(entry.path)
        except (UnsafeNameError, OSError):
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        receipt = sidecar_path(entry.path, RECEIPT_SUFFIX)
        when = _imported_at(receipt)
        age = now - (st.st_mtime if when is None else when)
        if age > older_than:
            found.append(Pruned(entry.relative, st.st_size + _size(receipt)))
    return found


def remove(spool: Spool, item: Pruned) -> None:
    """Remove one pruned file, then its receipt, then its date folders if they are empty."""
    bundle = spool.path_in("done", item.rel)
    receipt = sidecar_path(bundle, RECEIPT_SUFFIX)
    try:
        bundle.unlink(missing_ok=True)
        receipt.unlink(missing_ok=True)
        source_path(bundle).unlink(missing_ok=True)
        fsync_dir(bundle.parent)
    except OSError as exc:
        raise SpoolError(f"cannot remove {item.display}: {exc.strerror or exc}", bundle) from exc
    # <feed>/<YYYY>/<MM>/<DD>/<name>: the three date folders, innermost first. An uploader moving
    # a file into one of them at this moment either keeps it (not empty) or retries its move.
    folder = bundle.parent
    removed = 0
    while removed < 3:
        try:
            folder.rmdir()
        except OSError:
            break
        removed += 1
        folder = folder.parent
    if removed:
        with contextlib.suppress(OSError):
            fsync_dir(folder)
