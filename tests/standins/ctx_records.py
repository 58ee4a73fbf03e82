"""stix2arango's records and collections as the CTX stand-in keeps them.

A record is STIX content plus stix2arango's underscore fields; a :class:`Collection` holds the
records of one ArangoDB collection with the lookups the server's queries use, a :class:`Feed` its
vertex and edge collections. Sources per helper: ``stix2arango/utils.py`` (``generate_md5``,
``get_embedded_refs``, ``create_relationship_obj``'s id, ``EMBEDDED_RELATIONSHIP_RE``),
``stix2arango/config.py`` (``namespace``), ``services/version_annotator.py`` (the latest record),
ArangoDB's ``KEEP(doc, KEYS(doc, TRUE))`` (:func:`strip`). How records come to be is
:mod:`tests.standins.ctx_world`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
NS = uuid.UUID("0c7b7f0e-3d7c-4c4e-9c43-6a1f3f0d9a11")
#: stix2arango/config.py ``namespace``: synthetic relationship ids.
S2A_NAMESPACE = uuid.UUID("72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4")
S2A_IDENTITY_ID = "identity--72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4"
DOGESEC_IDENTITY_ID = "identity--9779a2db-f98c-5f4b-8d08-8ee04e02dbb5"
DEFAULT_NOTE = "automatically imported on collection creation"
#: stix2arango/utils.py ``EMBEDDED_RELATIONSHIP_RE``.
EMBEDDED_REF = re.compile(r"([a-z\-_]+)[_\-]refs{0,1}")
SMO_TYPES = frozenset({"marking-definition", "extension-definition", "language-content"})
TLP2_CLEAR = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"
TLP2_GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def ts(when: datetime) -> str:
    """A time as stix2arango writes ``_record_modified`` (and the stand-in writes STIX times)."""
    return when.astimezone(UTC).strftime(TS_FORMAT)


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, TS_FORMAT).replace(tzinfo=UTC)


def strip(record: dict[str, Any]) -> dict[str, Any]:
    """What ArangoDB's ``KEEP(doc, KEYS(doc, TRUE))`` returns: no key starting with ``_``."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def md5_of(obj: dict[str, Any]) -> str:
    """stix2arango/utils.py ``generate_md5``."""
    content = strip(obj)
    for key in ("_from", "_to", "_stix2arango_note"):
        if value := obj.get(key):
            content[key] = value
    text = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.md5(text, usedforsecurity=False).hexdigest()


def refs_of(obj: Any, xpath: tuple[str, ...] = ()) -> list[tuple[str, list[Any]]]:
    """stix2arango/utils.py ``get_embedded_refs``: ``(relationship_type, targets)`` pairs."""
    found: list[tuple[str, list[Any]]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("source_ref", "target_ref"):
                continue
            if match := EMBEDDED_REF.fullmatch(key):
                targets = [t for t in (value if isinstance(value, list) else [value]) if t]
                if targets:
                    found.append(("-".join([*xpath, *match.group(1).split("_")]), targets))
            elif isinstance(value, list):
                found.extend(refs_of(value, (*xpath, key)))
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                found.extend(refs_of(item, xpath))
    return found


def synthetic_id(relationship_type: str, source: str, target: str) -> str:
    name = f"{relationship_type}+{source}+{target}"
    return f"relationship--{uuid.uuid5(S2A_NAMESPACE, name)}"


class Clock:
    """The server's ``datetime.now``: each record a few microseconds after the previous one.

    Simulated (seeded, from ``start``) until :meth:`use_real_time`; from then on the machine's UTC
    time, as ``insert_several_objects`` takes it (``datetime.now(timezone.utc)``), so records a
    live writer adds sort after the world's history and ties happen only when the clock says so.
    """

    def __init__(self, start: datetime, rng: random.Random, tie_every: int) -> None:
        self.now = start
        self.rng = rng
        self.tie_every = tie_every
        self.real = False
        self._count = 0

    def use_real_time(self) -> None:
        self.real = True
        self.now = datetime.now(UTC)

    def next_upload(self) -> None:
        if self.real:
            self.now = datetime.now(UTC)
            return
        self.now += timedelta(
            seconds=self.rng.randint(1, 900), microseconds=self.rng.randint(1, 999_999)
        )

    def tick(self, same_time: bool) -> str:
        if self.real:
            if not same_time:
                self.now = datetime.now(UTC)
            return ts(self.now)
        self._count += 1
        tie = same_time or (self.tie_every > 0 and self._count % self.tie_every == 0)
        if not tie:
            self.now += timedelta(microseconds=self.rng.randint(1, 40))
        return ts(self.now)


@dataclass
class Run:
    """Records sorted as ``SORT doc._record_modified ASC`` (ties by a hash of ``_key``)."""

    times: list[str]
    records: list[dict[str, Any]]


class Collection:
    """One ArangoDB collection of records, with the lookups the server's queries use."""

    def __init__(self, name: str, *, edge: bool) -> None:
        self.name = name
        self.edge = edge
        self.by_key: dict[str, dict[str, Any]] = {}
        self.by_id: dict[Any, list[dict[str, Any]]] = {}
        self.hashes: set[tuple[Any, str]] = set()
        self.by_from: dict[str, list[dict[str, Any]]] = {}
        self.tie: dict[str, str] = {}
        self.seq: dict[str, int] = {}
        self._json: dict[str, bytes] = {}
        self._runs: dict[Any, Run] | None = None
        self._ends: dict[str, dict[str, list[dict[str, Any]]]] | None = None

    def add(self, record: dict[str, Any]) -> None:
        key = record["_key"]
        self.by_key[key] = record
        self.by_id.setdefault(record.get("id"), []).append(record)
        self.hashes.add((record.get("id"), record["_record_md5_hash"]))
        if "_from" in record:
            self.by_from.setdefault(record["_from"], []).append(record)
        # Ties in SORT come back in no defined order: a hash of the key, never the id.
        self.tie[key] = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:10]
        self.seq[key] = len(self.seq)
        self.changed()

    def changed(self) -> None:
        self._runs = None
        self._ends = None

    def order_key(self, record: dict[str, Any]) -> tuple[str, str]:
        return record["_record_modified"], self.tie[record["_key"]]

    def json(self, record: dict[str, Any]) -> bytes:
        key = record["_key"]
        if key not in self._json:
            self._json[key] = json.dumps(strip(record)).encode()
        return self._json[key]

    def runs(self) -> dict[Any, Run]:
        """Sorted runs: ``"all"``, per ``type`` (vertices), ``False``/``"refs"`` (edges)."""
        if self._runs is None:
            ordered = sorted(self.by_key.values(), key=self.order_key)
            groups: dict[Any, list[dict[str, Any]]] = {"all": ordered}
            for record in ordered:
                if self.edge:
                    if record.get("_is_ref") is False:
                        groups.setdefault(False, []).append(record)
                    if record.get("_is_ref") in (True, False):
                        groups.setdefault("refs", []).append(record)
                else:
                    groups.setdefault(("type", record.get("type")), []).append(record)
            self._runs = {
                name: Run([r["_record_modified"] for r in recs], recs)
                for name, recs in groups.items()
            }
        return self._runs

    def ends(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Edges by ``target_ref`` and by ``source_ref``, in the order of the persistent indexes
        stix2arango creates (``relation_to``: target_ref, source_ref, relationship_type;
        ``relation_from``: source_ref, target_ref, relationship_type; then insertion order)."""
        if self._ends is None:
            to: dict[str, list[dict[str, Any]]] = {}
            frm: dict[str, list[dict[str, Any]]] = {}
            for record in self.by_key.values():
                to.setdefault(str(record.get("target_ref")), []).append(record)
                frm.setdefault(str(record.get("source_ref")), []).append(record)
            for index, other in ((to, "source_ref"), (frm, "target_ref")):
                for edges in index.values():
                    edges.sort(
                        key=lambda r, o=other: (
                            str(r.get(o)),
                            str(r.get("relationship_type")),
                            self.seq[r["_key"]],
                        )
                    )
            self._ends = {"to": to, "from": frm}
        return self._ends


def _latest(records: list[dict[str, Any]]) -> dict[str, Any]:
    flagged = [r for r in records if r.get("_is_latest")]
    pool = flagged or records
    return max(pool, key=lambda r: (str(r.get("modified") or ""), r["_record_modified"]))


@dataclass
class Feed:
    """One feed: its collections and what the generator put in it."""

    id: str
    name: str
    status: str = "active"
    report_ids: list[str] = field(default_factory=list)
    orphan_ids: list[str] = field(default_factory=list)
    identity_id: str | None = None

    def __post_init__(self) -> None:
        base = "ctx_" + self.id.replace("-", "")
        self.vertex = Collection(base + "_vertex_collection", edge=False)
        self.edge = Collection(base + "_edge_collection", edge=True)

    def latest_record(self, object_id: Any) -> dict[str, Any] | None:
        records = self.vertex.by_id.get(object_id) or self.edge.by_id.get(object_id)
        return _latest(records) if records else None

    @property
    def objects(self) -> MappingProxyType[str, dict[str, Any]]:
        """Read-only: the latest record of every non-synthetic id (underscore keys included)."""
        latest: dict[str, dict[str, Any]] = {}
        for collection in (self.vertex, self.edge):
            for object_id, records in collection.by_id.items():
                if records[0].get("_is_ref") is not True:
                    latest[str(object_id)] = _latest(records)
        return MappingProxyType(latest)
