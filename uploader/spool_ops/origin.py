"""The origin of an adopted spool file: its ``.source`` sidecar, read, written and carried along.

A pycti "diode" file (``OpenCTIConnectorHelper.send_stix2_bundle`` with ``send_to_directory``)
names the connector that produced its bundle, the user it ran for (``applicant_id``) and whether
the platform may overwrite (``update``). Adoption (:mod:`uploader.adoption.adopt`) keeps those in
``<spool file name>.source`` beside the bundle, so that the import can register that connector
and create the file's work under it. The sidecar stays in ``incoming/`` while the file is claimed
and moves with it to ``done/`` or ``failed/`` (:mod:`uploader.spool_ops.outcome`) and back
(:mod:`uploader.spool_ops.replay`). Plain bundles have no sidecar: they import under our own connector.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.durable import write_atomic
from shared.layout import INCOMING, SOURCE_SUFFIX, Spool, sidecar_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceConnector:
    """The connector that wrote a diode file (its ``connector`` object, as pycti writes it)."""

    id: str
    name: str
    type: str
    scope: str
    auto: bool = False
    validate_before_import: bool = False


@dataclass(frozen=True)
class Origin:
    """Where an adopted file came from; ``connector`` None for a plain bundle."""

    original_name: str
    connector: SourceConnector | None = None
    applicant_id: str | None = None
    update: bool = False
    bundle_type: str | None = None
    epoch: str | None = None

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Origin:
        document: dict[str, Any] = json.loads(data)
        connector = document.get("connector")
        return cls(
            original_name=str(document.get("original_name", "")),
            connector=SourceConnector(**connector) if isinstance(connector, dict) else None,
            applicant_id=document.get("applicant_id"),
            update=bool(document.get("update", False)),
            bundle_type=document.get("bundle_type"),
            epoch=document.get("epoch"),
        )


def source_path(bundle_path: Path) -> Path:
    return sidecar_path(bundle_path, SOURCE_SUFFIX)


def write_origin(bundle_path: Path, origin: Origin, *, sync_dir: bool = True) -> None:
    """Durably write the sidecar of ``bundle_path`` (before the bundle is published); with
    ``sync_dir=False`` the bundle's publication, which fsyncs the same folder, makes it durable."""
    write_atomic(source_path(bundle_path), origin.to_json(), sync_dir=sync_dir)


def read_origin(spool: Spool, rel: PurePosixPath) -> Origin | None:
    """The origin of ``incoming/<rel>``, None when it has no (readable) sidecar."""
    path = source_path(spool.path_in(INCOMING, rel))
    try:
        return Origin.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.error(
            "unreadable %s, importing under our own connector: %s",
            path.name,
            exc,
            extra={"file": str(rel)},
        )
        return None


def carry_origin(spool: Spool, rel: PurePosixPath, src_state: str, dst_state: str) -> None:
    """Move ``<rel>.source`` from ``src_state`` to ``dst_state`` if there is one.

    Called after the bundle itself moved (its move fsyncs the destination folder); a crash in
    between leaves the sidecar behind, where :func:`read_origin` of a replayed file still finds it.
    """
    src = source_path(spool.path_in(src_state, rel))
    dst = source_path(spool.path_in(dst_state, rel))
    with contextlib.suppress(FileNotFoundError):
        os.replace(src, dst)
