"""What a foreign file becomes in the spool: a pycti diode file's bundle in its connector's feed
folder, dated by the epoch in its name, or a plain bundle in ``UPLOADER_ADOPT_FEED_ID`` dated by
its newest ``modified`` (:mod:`uploader.adoption.adopt` says where the formats come from).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from shared.durable import sha256_bytes
from shared.errors import UnsafeNameError
from shared.layout import FEED_OBJECTS_SUBJECT, SpoolName, check_feed_id, check_stix_id
from shared.timestamps import parse_stix_timestamp
from uploader.spool_ops.origin import Origin, SourceConnector

#: ``_generate_bundle_filename``: ``<name>-%Y%m%d-%H%M%S-<str(time.time())>.json``.
DIODE_NAME_RE = re.compile(r"-(\d{8})-(\d{6})-(\d+(?:\.\d+)?(?:e[+-]?\d+)?)\.json$")


class RefusedError(Exception):
    """A foreign file that cannot be adopted; ``kind`` as in a ``.reason`` file."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class Plan:
    """What a foreign file becomes: its feed, its bytes in the spool, their name, its origin."""

    feed: str
    data: bytes
    name: SpoolName
    origin: Origin


def plan_of(path: Path, data: bytes, digest: str, mtime: float, feed_id: str) -> Plan:
    """Where a foreign file goes (feed, spool name) and its origin, or :class:`RefusedError`.

    ``digest`` is the SHA-256 of ``data`` (the caller has it already): a plain bundle's spool name.
    """
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RefusedError("not-json", f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RefusedError("not-a-bundle", "neither a pycti diode file nor a STIX bundle")
    if isinstance(document.get("connector"), dict) and "bundle" in document:
        return _diode_plan(path, document, mtime)
    if document.get("type") == "bundle" and isinstance(document.get("objects"), list):
        modified = _newest(document["objects"]) or datetime.fromtimestamp(mtime, UTC)
        name = SpoolName(modified, _subject(document), digest)
        return Plan(feed_id, data, name, Origin(original_name=path.name))
    raise RefusedError(
        "not-a-bundle",
        "neither a pycti diode file (connector, bundle) nor a STIX bundle (type bundle, objects)",
    )


def _diode_plan(path: Path, document: dict[str, Any], mtime: float) -> Plan:
    connector = document["connector"]
    bundle = document["bundle"]
    if isinstance(bundle, str):
        # pycti writes an object; a string holding the bundle is taken too.
        try:
            bundle = json.loads(bundle)
        except ValueError:
            raise RefusedError("not-a-bundle", "its bundle is not JSON") from None
    if not (
        isinstance(bundle, dict)
        and bundle.get("type") == "bundle"
        and isinstance(bundle.get("objects"), list)
    ):
        raise RefusedError("not-a-bundle", "a diode file whose bundle is not a STIX bundle")
    try:
        feed = check_feed_id(connector.get("id"))
    except UnsafeNameError:
        raise RefusedError(
            "not-a-bundle",
            f"a diode file whose connector id {connector.get('id')!r} is no UUID",
        ) from None
    match = DIODE_NAME_RE.search(path.name)
    epoch = match.group(3) if match else None
    modified = _from_epoch(epoch) if epoch else None
    if modified is None:
        # Renamed on the way: the bundle's own times order it, else the mtime.
        modified = _newest(bundle["objects"]) or datetime.fromtimestamp(mtime, UTC)
    data = json.dumps(bundle, ensure_ascii=False).encode("utf-8")
    applicant = document.get("applicant_id")
    origin = Origin(
        original_name=path.name,
        connector=SourceConnector(
            id=feed,
            name=str(connector.get("name") or feed),
            type=str(connector.get("type") or "EXTERNAL_IMPORT"),
            scope=_scope(connector.get("scope")),
            auto=bool(connector.get("auto", False)),
            validate_before_import=bool(connector.get("validate_before_import", False)),
        ),
        applicant_id=str(applicant) if applicant else None,
        update=bool(document.get("update", False)),
        bundle_type=str(document.get("bundle_type") or ""),
        epoch=epoch,
    )
    return Plan(feed, data, SpoolName(modified, _subject(bundle), sha256_bytes(data)), origin)


def source_order(path: Path) -> tuple[int, Decimal, str]:
    """Sort key of files adopted together: diode files by the epoch in their names (so each
    connector's in its own order, and the connectors interleaved: their feeds import in
    parallel), then other files by name."""
    match = DIODE_NAME_RE.search(path.name)
    if match is None:
        return (1, Decimal(0), path.name)
    try:
        epoch = Decimal(match.group(3))
    except InvalidOperation:
        return (1, Decimal(0), path.name)
    return (0, epoch, path.name)


def _from_epoch(text: str) -> datetime | None:
    try:
        value = Decimal(text)
        seconds = int(value)
        micros = int((value - seconds) * 1_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    except (InvalidOperation, ValueError, OverflowError, OSError):
        return None


def _newest(objects: list[Any]) -> datetime | None:
    newest: datetime | None = None
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        stamp = obj.get("modified") or obj.get("created")
        if not isinstance(stamp, str):
            continue
        try:
            when = parse_stix_timestamp(stamp)
        except ValueError:
            continue
        if newest is None or when > newest:
            newest = when
    return newest


def _subject(bundle: dict[str, Any]) -> str:
    try:
        return check_stix_id(bundle.get("id"))
    except UnsafeNameError:
        return FEED_OBJECTS_SUBJECT


def _scope(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)
