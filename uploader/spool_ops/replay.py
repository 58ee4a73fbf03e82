"""Replay: move files from ``failed/`` (or ``done/``) back into ``incoming/``.

Never overwrites: a file whose name already exists in ``incoming/`` is skipped and reported.
Sidecars: replaying from ``failed/`` removes the ``.reason`` (its content is logged first; the file
will get a new outcome), replaying from ``done/`` keeps the ``.receipt`` in ``done/`` as the record of
the earlier import until the new import replaces it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from shared.durable import fsync_dir, move_no_replace
from shared.errors import DestinationExistsError, SpoolError, UnsafeNameError
from shared.layout import (
    DONE,
    FAILED,
    INCOMING,
    REASON_SUFFIX,
    Spool,
    check_feed_id,
    sidecar_path,
    walk_bundles,
)
from uploader.errors import ReplayError
from uploader.spool_ops.origin import carry_origin

logger = logging.getLogger(__name__)

Source = Literal["failed", "done"]


@dataclass(frozen=True)
class ReplayResult:
    """One file considered by replay: ``moved`` or skipped with ``reason``."""

    rel: PurePosixPath
    moved: bool
    reason: str = ""


def resolve(spool: Spool, source: Source, spec: str) -> PurePosixPath:
    """The path relative to ``source`` of a FILE argument.

    Accepts a filesystem path inside ``<spool>/<source>/``, a path relative to that folder
    (``<feed>/<YYYY>/<MM>/<DD>/<name>``), or a bare file name found in that folder.
    """
    root = spool.state_dir(source)
    candidate = Path(spec)
    for base in (root.resolve(), root.absolute()):
        with contextlib.suppress(ValueError, OSError):
            rel = candidate.absolute().relative_to(base)
            if (root / rel).is_file() or (root / rel).is_symlink():
                return PurePosixPath(rel.as_posix())
    try:
        path = spool.path_in(source, spec)
    except UnsafeNameError:
        raise ReplayError(f"not a path inside {source}/: {spec}", spec) from None
    if path.is_file() or path.is_symlink():
        return PurePosixPath(spec)
    if "/" not in spec:
        matches = [e.relative for e in walk_bundles(root) if e.relative.name == spec]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ReplayError(f"{spec} is in {source}/ more than once; give its path", spec)
    raise ReplayError(f"not found in {source}/: {spec}", spec)


def select(
    spool: Spool, source: Source, *, feed: str | None = None, files: tuple[str, ...] = ()
) -> list[PurePosixPath]:
    """The files of ``source`` to replay: the named ``files``, else all (of ``feed`` if given)."""
    if files:
        rels = [resolve(spool, source, spec) for spec in files]
        if feed is not None:
            rels = [rel for rel in rels if rel.parts[0] == feed]
        return rels
    root = spool.state_dir(source)
    if feed is not None:
        root = root / check_feed_id(feed)
    base = spool.state_dir(source)
    return [PurePosixPath(e.path.relative_to(base).as_posix()) for e in walk_bundles(root)]


def replay(spool: Spool, source: Source, rels: list[PurePosixPath]) -> list[ReplayResult]:
    """Move each of ``rels`` from ``source`` back to ``incoming/``, never overwriting."""
    if source not in (FAILED, DONE):
        raise ValueError(f"cannot replay from {source!r}")
    results = []
    for rel in rels:
        src = spool.path_in(source, rel)
        dst = spool.path_in(INCOMING, rel)
        reason_file = sidecar_path(src, REASON_SUFFIX)
        reason = ""
        if source == FAILED:
            with contextlib.suppress(OSError, ValueError):
                reason = str(json.loads(reason_file.read_text(encoding="utf-8")).get("kind", ""))
        # An adopted file's origin goes first: the uploader never sees it without.
        carry_origin(spool, rel, source, INCOMING)
        try:
            move_no_replace(src, dst)
        except DestinationExistsError:
            results.append(ReplayResult(rel, False, "already in incoming/"))
            continue
        except SpoolError as exc:
            results.append(ReplayResult(rel, False, str(exc)))
            continue
        if source == FAILED:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(reason_file)
                fsync_dir(reason_file.parent)
        logger.info(
            "replayed %s from %s/",
            rel.name,
            source,
            extra={"file": str(rel), "previous_reason": reason or None},
        )
        results.append(ReplayResult(rel, True))
    return results
