"""The data behind the CTX stand-in: per feed, the two ArangoDB collections stix2arango fills.

Each feed is a vertex and an edge collection of **records** (STIX content plus stix2arango's
underscore fields), built only by simulated uploads (:meth:`World.upload`) that do what the real
write path does:

* ``cyberthreatexchange/worker/tasks.py`` ``make_uploads`` after ``server/arango_helpers.py``
  ``build_context``: of duplicate ids in one upload only the last is kept; an object whose content
  hash equals the hash of its id's latest record is skipped; a relationship whose ``source_ref`` or
  ``target_ref`` is neither in the upload nor stored is skipped (``missing_source``/``missing_target``).
* ``stix2arango/stix2arango/stix2arango.py`` ``run_with_bundle`` with CTX's options
  (``ignore_embedded_relationships=False``, ``ignore_embedded_relationships_sro=True``,
  ``ignore_embedded_relationships_smo=True``): non-relationships become vertices
  (``process_bundle_into_graph``), ``relationship`` objects edges with ``_is_ref: False``
  (``map_relationships``; sightings stay vertices), then ``map_embedded_relationships`` turns every
  ``*_ref``/``*_refs`` of each inserted non-SMO, non-relationship object into a synthetic
  relationship edge (``_is_ref: True``) built as ``stix2arango/utils.py`` ``create_relationship_obj``
  does.
* ``stix2arango/services/arangodb_service.py`` ``insert_several_objects``: a new record only for a
  new ``(id, _record_md5_hash)`` (the ``s2a_unique_constraint`` index), ``_record_created`` =
  ``_record_modified`` = ``datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` taken per
  record, ``_key`` = ``f"{id}+{now}"``, ``_source_type``/``_target_type`` on relationships; then
  ``update_is_latest_several`` (``services/version_annotator.py`` ``annotate_versions``: the latest
  is the greatest ``modified``, then the greatest ``_record_modified``; without ``modified``, the
  greatest ``_record_modified``) and ``deprecate_relationships`` (edges whose ``_from`` is a record
  that lost ``_is_latest`` lose it too).
* A new feed is ``server/models.py`` ``create_collection``: stix2arango's default objects (its
  identity and marking-definition, the dogesec identity, nine TLP marking-definitions; no synthetic
  edges) and then the feed's identity. ``update_identities`` (:meth:`World.touch_record`) rewrites
  ``_record_modified`` of every record of one id in place with ``timezone.now().isoformat()`` plus
  ``Z``: a whole second then reads ``…:05Z``, which sorts after ``…:05.999999Z``.

``now`` is a simulated clock (:class:`Clock`): strictly increasing by default, with ``tie_every``
or ``same_time`` giving several records one ``_record_modified`` as a fast insert loop does.

The synthetic relationship follows the newest stix2arango code and tests: ``relationship_type``
from the property name (``object_refs`` → ``object``, ``created_by_ref`` → ``created-by``,
``object_marking_refs`` → ``object-marking``, ``resolves_to_refs`` → ``resolves-to``), ``id`` =
``relationship--`` + uuid5(``72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4``, ``f"{type}+{source}+{target}"``),
``created``/``modified``/``object_marking_refs`` copied from the source object when it has them
(an SCO's have neither ``created`` nor ``modified``), ``created_by_ref`` stix2arango's identity,
``external_references`` ``[{"source_name": "stix2arango", "description": "embedded-relationship"}]``
(an older utils.py wrote a bare dict), empty refs skipped. Its record hash covers ``_from``/``_to``
(the source record's ``_id``), so every new version of a report stores new records of all its
synthetic edges under the same ids.
"""

from __future__ import annotations

import base64
import copy
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

SDO_KINDS = [
    "attack-pattern",
    "campaign",
    "course-of-action",
    "grouping",
    "identity",
    "incident",
    "indicator",
    "infrastructure",
    "intrusion-set",
    "location",
    "malware",
    "malware-analysis",
    "note",
    "observed-data",
    "opinion",
    "threat-actor",
    "tool",
    "vulnerability",
]
SCO_KINDS = [
    "artifact",
    "autonomous-system",
    "directory",
    "domain-name",
    "email-addr",
    "email-message",
    "file",
    "ipv4-addr",
    "ipv6-addr",
    "mac-addr",
    "mutex",
    "network-traffic",
    "process",
    "software",
    "url",
    "user-account",
    "windows-registry-key",
    "x509-certificate",
]
CUSTOM_KINDS = [
    "bank-account",
    "cryptocurrency-wallet",
    "payment-card",
    "phone-number",
    "user-agent",
]
ALL_KINDS = SDO_KINDS + SCO_KINDS + CUSTOM_KINDS
WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "iris", "jade"]


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
    """The server's ``datetime.now``: each record a few microseconds after the previous one."""

    def __init__(self, start: datetime, rng: random.Random, tie_every: int) -> None:
        self.now = start
        self.rng = rng
        self.tie_every = tie_every
        self._count = 0

    def next_upload(self) -> None:
        self.now += timedelta(
            seconds=self.rng.randint(1, 900), microseconds=self.rng.randint(1, 999_999)
        )

    def tick(self, same_time: bool) -> str:
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


class Producer:
    """A feed's author: seeded, realistic STIX 2.1 content (no server fields)."""

    def __init__(self, rng: random.Random, feed_index: int, identity_id: str) -> None:
        self.rng = rng
        self.identity_id = identity_id
        self.when = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=feed_index)
        self.kind_cursor = 0
        self.ext_ids = {k: f"extension-definition--{uuid.uuid5(NS, k)}" for k in CUSTOM_KINDS}

    def uid(self, kind: str) -> str:
        return f"{kind}--{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def stamp(self) -> str:
        self.when += timedelta(
            seconds=self.rng.randint(1, 3600), microseconds=self.rng.randint(0, 999_999)
        )
        return ts(self.when)

    def word(self) -> str:
        return self.rng.choice(WORDS) + str(self.rng.randint(1, 999))

    def next_kind(self) -> str:
        kind = ALL_KINDS[self.kind_cursor % len(ALL_KINDS)]
        self.kind_cursor += 1
        return self.next_kind() if kind == "identity" else kind

    def extension_definition(self, kind: str) -> dict[str, Any]:
        return {
            "type": "extension-definition",
            "spec_version": "2.1",
            "id": self.ext_ids[kind],
            "created_by_ref": DOGESEC_IDENTITY_ID,
            "created": "2020-01-01T00:00:00.000Z",
            "modified": "2020-01-01T00:00:00.000Z",
            "name": kind,
            "description": f"This extension creates a new SCO that can be used to represent {kind}.",
            "schema": f"https://raw.githubusercontent.com/muchdogesec/stix4doge/main/schemas/scos/{kind}.json",
            "version": "1.0",
            "extension_types": ["new-sco"],
            "object_marking_refs": [TLP2_CLEAR],
        }

    def sdo(self, kind: str, refs: list[str]) -> dict[str, Any]:
        when = self.stamp()
        name = f"{kind} {self.word()}"
        n = self.rng.getrandbits(32)
        cve = f"CVE-2024-{1000 + n % 98000}"
        extra: dict[str, Any] = {
            "attack-pattern": {
                "name": name,
                "external_references": [
                    {"source_name": "mitre-attack", "external_id": f"T{1000 + n % 1000}"}
                ],
            },
            "campaign": {"name": name, "first_seen": when},
            "course-of-action": {"name": name, "description": "Block and monitor."},
            "grouping": {"name": name, "context": "suspicious-activity", "object_refs": refs},
            "identity": {
                "name": name,
                "identity_class": "organization",
                "sectors": ["financial-services"],
            },
            "incident": {"name": name, "description": "Observed intrusion."},
            "indicator": {
                "name": name,
                "indicator_types": ["malicious-activity"],
                "pattern": f"[ipv4-addr:value = '198.51.100.{1 + n % 254}']",
                "pattern_type": "stix",
                "valid_from": when,
            },
            "infrastructure": {"name": name, "infrastructure_types": ["command-and-control"]},
            "intrusion-set": {"name": name, "aliases": [f"{WORDS[n % 10]}{n % 999}"]},
            "location": {"name": name, "region": "europe", "country": ["DE", "FR", "NL"][n % 3]},
            "malware": {"name": name, "is_family": True, "malware_types": ["ransomware"]},
            "malware-analysis": {
                "product": "sandbox",
                "result": "malicious",
                "analysis_started": when,
            },
            "note": {"abstract": name, "content": "Analyst note.", "object_refs": refs},
            "observed-data": {
                "first_observed": when,
                "last_observed": when,
                "number_observed": 1 + n % 50,
                "object_refs": refs,
            },
            "opinion": {"opinion": "agree", "explanation": "Confirmed.", "object_refs": refs},
            "threat-actor": {"name": name, "threat_actor_types": ["crime-syndicate"]},
            "tool": {"name": name, "tool_types": ["remote-access"]},
            "vulnerability": {
                "name": cve,
                "external_references": [{"source_name": "cve", "external_id": cve}],
            },
        }[kind]
        # Most objects were revised once before they were shared: modified after created.
        modified = ts(parse_ts(when) + timedelta(seconds=n % 86400)) if n % 4 else when
        obj = {
            "type": kind,
            "spec_version": "2.1",
            "id": self.uid(kind),
            "created": when,
            "modified": modified,
            "created_by_ref": self.identity_id,
            **extra,
        }
        if n % 10 < 3:
            obj["object_marking_refs"] = [TLP2_GREEN]
        return obj

    def sco(self, kind: str) -> dict[str, Any]:
        w = self.word()
        n = self.rng.getrandbits(64)
        hexes = f"{self.rng.getrandbits(256):064x}"
        extra: dict[str, Any] = {
            "artifact": {
                "mime_type": "application/octet-stream",
                "payload_bin": base64.b64encode(hexes.encode()).decode(),
            },
            "autonomous-system": {"number": 1 + n % 65000, "name": f"AS {w}"},
            "directory": {"path": f"C:\\Users\\{w}\\AppData"},
            "domain-name": {"value": f"{w}.example.com"},
            "email-addr": {"value": f"{w}@example.org"},
            "email-message": {"is_multipart": False, "subject": f"Invoice {w}"},
            "file": {"name": f"{w}.exe", "hashes": {"SHA-256": hexes}},
            "ipv4-addr": {"value": f"203.0.113.{1 + n % 254}"},
            "ipv6-addr": {"value": f"2001:db8::{n % 65536:x}"},
            "mac-addr": {"value": ":".join(hexes[i : i + 2] for i in range(0, 12, 2))},
            "mutex": {"name": f"Global\\{w}"},
            "network-traffic": {"protocols": ["tcp"], "dst_port": 1 + n % 65535},
            "process": {"pid": 100 + n % 9900, "command_line": f"{w}.exe -k"},
            "software": {"name": w, "vendor": "Example Corp", "version": "1.0"},
            "url": {"value": f"https://{w}.example.net/payload"},
            "user-account": {"user_id": str(1000 + n % 9000), "account_login": w},
            "windows-registry-key": {"key": f"HKEY_LOCAL_MACHINE\\Software\\{w}"},
            "x509-certificate": {
                "serial_number": hexes[:16],
                "issuer": "CN=Example CA",
                "subject": f"CN={w}",
            },
            "bank-account": {"iban": f"DE{10**19 + n % (9 * 10**19)}", "bank": "Example Bank"},
            "cryptocurrency-wallet": {"value": "bc1q" + hexes[:38]},
            "payment-card": {"value": str(4 * 10**15 + n % 10**15), "scheme": "VISA"},
            "phone-number": {"number": f"+4930{1000000 + n % 9000000}", "country": "DE"},
            "user-agent": {"string": f"Mozilla/5.0 ({w})"},
        }[kind]
        obj: dict[str, Any] = {"type": kind, "spec_version": "2.1", "id": self.uid(kind), **extra}
        if kind in CUSTOM_KINDS:
            obj["extensions"] = {self.ext_ids[kind]: {"extension_type": "new-sco"}}
        return obj

    def make(self, kind: str, refs: list[str]) -> dict[str, Any]:
        return self.sdo(kind, refs) if kind in SDO_KINDS else self.sco(kind)

    @staticmethod
    def _link_observables(members: list[dict[str, Any]]) -> None:
        """SCO-to-SCO refs (``resolves_to_refs``, ``belongs_to_refs``, …) within one report."""
        first = {}
        for m in members:
            first.setdefault(m["type"], m["id"])
        links = {
            "domain-name": ("resolves_to_refs", "ipv4-addr", True),
            "ipv4-addr": ("belongs_to_refs", "autonomous-system", True),
            "email-message": ("from_ref", "email-addr", False),
            "file": ("parent_directory_ref", "directory", False),
            "network-traffic": ("dst_ref", "ipv4-addr", False),
        }
        for m in members:
            if m["type"] in links:
                prop, kind, many = links[m["type"]]
                if kind in first:
                    m[prop] = [first[kind]] if many else first[kind]

    def relationship(self, source: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
        kind = {
            ("indicator", "malware"): "indicates",
            ("intrusion-set", "malware"): "uses",
            ("threat-actor", "attack-pattern"): "uses",
        }.get((source["type"], target["type"]), "related-to")
        when = self.stamp()
        return {
            "type": "relationship",
            "spec_version": "2.1",
            "id": self.uid("relationship"),
            "created": when,
            "modified": when,
            "created_by_ref": self.identity_id,
            "relationship_type": kind,
            "source_ref": source["id"],
            "target_ref": target["id"],
        }

    def report_bundle(
        self, size: int, identity: dict[str, Any]
    ) -> tuple[str, list[dict[str, Any]]]:
        """A report of ``size`` members, its relationships and everything it refers to."""
        members: list[dict[str, Any]] = []
        for _ in range(size):
            refs = [m["id"] for m in members[-2:]] or [self.identity_id]
            members.append(self.make(self.next_kind(), refs))
        if self.rng.random() < 0.25:
            members.append(self.sdo("identity", []))
        self._link_observables(members)
        sdos = [m for m in members if m["type"] in SDO_KINDS]
        scos = [m for m in members if m["type"] not in SDO_KINDS]
        targets = (scos + sdos[1:])[: len(sdos)]
        rels = [self.relationship(s, t) for s, t in zip(sdos, targets, strict=False)]
        extras = []
        indicator = next((m for m in members if m["type"] == "indicator"), None)
        if indicator is not None and self.rng.random() < 0.5:
            when = self.stamp()
            extras.append(
                {
                    "type": "sighting",
                    "spec_version": "2.1",
                    "id": self.uid("sighting"),
                    "created": when,
                    "modified": when,
                    "created_by_ref": self.identity_id,
                    "count": self.rng.randint(1, 9),
                    "sighting_of_ref": indicator["id"],
                    "where_sighted_refs": [self.identity_id],
                }
            )
        created = self.stamp()
        modified = ts(parse_ts(created) + timedelta(hours=self.rng.randint(1, 72)))
        report = {
            "type": "report",
            "spec_version": "2.1",
            "id": self.uid("report"),
            "created": created,
            "modified": modified,
            "created_by_ref": self.identity_id,
            "name": f"Report {self.word()}",
            "description": "Threat report generated by the CTX stand-in.",
            "published": created,
            "report_types": ["threat-report"],
            "labels": ["stand-in"],
            "object_refs": [o["id"] for o in members + extras + rels],
            "object_marking_refs": [self.rng.choice([TLP2_CLEAR, TLP2_GREEN])],
            "external_references": [
                {
                    "source_name": "cyberthreatexchange",
                    "url": f"https://example.invalid/{self.word()}",
                }
            ],
        }
        customs = sorted({m["type"] for m in members if m["type"] in CUSTOM_KINDS})
        exts = [self.extension_definition(k) for k in customs]
        return report["id"], [identity, *exts, *members, *extras, *rels, report]

    def orphans(self, count: int, kinds: list[str] | None = None) -> list[dict[str, Any]]:
        objs = []
        for i in range(count):
            kind = kinds[i % len(kinds)] if kinds else self.next_kind()
            objs.append(self.make(kind, [self.identity_id]))
        customs = sorted({o["type"] for o in objs if o["type"] in CUSTOM_KINDS})
        return [self.extension_definition(k) for k in customs] + objs


def default_objects() -> list[dict[str, Any]]:
    """stix2arango's default objects (``default_objects``), imported into every new collection."""
    markings = [
        ("613f2e26-407d-48c7-9eca-b8e91df99dc9", "white"),
        ("34098fce-860f-48ae-8e50-ebd3cc5e41da", "green"),
    ]
    markings += [
        ("f88d31f6-486f-44da-b317-01333bde0b82", "amber"),
        ("5e57c739-391a-4eb3-b6be-7d15ca92d5ed", "red"),
    ]
    tlp2 = [
        ("94868c89-83c2-464b-929b-a1a8aa3c8487", "clear"),
        ("bab4a63c-aed9-4cf5-a766-dfca5abac2bb", "green"),
    ]
    tlp2 += [
        ("55d920b0-5e8b-4f79-9ee9-91f868d9b421", "amber"),
        ("939a9414-2ddd-4d32-a0cd-375ea402b003", "amber+strict"),
    ]
    tlp2 += [("e828b379-4e03-4974-9ac4-e53a884c97c1", "red")]
    markings_dogesec = [TLP2_CLEAR, "marking-definition--97ba4e8b-04f6-57e8-8f6e-3a0f0a7dc0fb"]
    objs: list[dict[str, Any]] = [
        {
            "type": "marking-definition",
            "spec_version": "2.1",
            "id": "marking-definition--72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4",
            "created_by_ref": DOGESEC_IDENTITY_ID,
            "created": "2020-01-01T00:00:00.000Z",
            "definition_type": "statement",
            "definition": {
                "statement": "This object was created using: https://github.com/muchdogesec/stix2arango"
            },
            "object_marking_refs": markings_dogesec,
        },
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": S2A_IDENTITY_ID,
            "created_by_ref": DOGESEC_IDENTITY_ID,
            "created": "2020-01-01T00:00:00.000Z",
            "modified": "2020-01-01T00:00:00.000Z",
            "name": "stix2arango",
            "description": "https://github.com/muchdogesec/stix2arango",
            "identity_class": "system",
            "sectors": ["technology"],
            "contact_information": "https://www.dogesec.com/contact/",
            "confidence": 100,
            "object_marking_refs": markings_dogesec,
        },
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": DOGESEC_IDENTITY_ID,
            "created": "2020-01-01T00:00:00.000Z",
            "modified": "2020-01-01T00:00:00.000Z",
            "name": "dogesec",
            "description": "https://github.com/muchdogsec/",
            "identity_class": "organization",
            "sectors": ["technology"],
            "contact_information": "https://www.dogesec.com/contact/",
            "object_marking_refs": markings_dogesec,
        },
    ]
    for ident, level in markings:
        objs.append(
            {
                "type": "marking-definition",
                "spec_version": "2.1",
                "id": f"marking-definition--{ident}",
                "created": "2017-01-20T00:00:00.000Z",
                "definition_type": "tlp",
                "name": f"TLP:{level.upper()}",
                "definition": {"tlp": level},
            }
        )
    for ident, level in tlp2:
        objs.append(
            {
                "type": "marking-definition",
                "spec_version": "2.1",
                "id": f"marking-definition--{ident}",
                "created": "2022-10-01T00:00:00.000Z",
                "name": f"TLP:{level.upper()}",
                "extensions": {
                    "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": {
                        "extension_type": "property-extension",
                        "tlp_2_0": level,
                    }
                },
            }
        )
    return objs


class World:
    """All feeds, one server clock, and the upload path that is the only way records appear."""

    def __init__(
        self,
        *,
        feeds: int,
        reports: int,
        orphans: int,
        seed: int,
        versions: int,
        old_versions: int,
        tie_every: int,
        big_reports: int,
    ) -> None:
        self.clock = Clock(
            datetime(2025, 3, 1, tzinfo=UTC), random.Random(f"{seed}-clock"), tie_every
        )
        self.feeds: dict[str, Feed] = {}
        self.producers: dict[str, Producer] = {}
        schedules = []
        for index in range(feeds + 1):
            feed_id = str(uuid.uuid5(NS, f"feed-{seed}-{index}"))
            inactive = index == feeds
            feed = Feed(
                feed_id,
                f"Stand-in feed {index}" + (" (inactive)" if inactive else ""),
                status="inactive" if inactive else "active",
            )
            self.feeds[feed_id] = feed
            self._create_collection(feed, index, seed)
            rng = random.Random(f"{seed}-{index}-schedule")
            # Nobody may read the inactive feed: a token world is enough there.
            count = min(reports, 2) if inactive else reports
            steps = self._schedule(
                rng, count, min(orphans, 2) if inactive else orphans, versions, old_versions
            )
            big = set(rng.sample(range(count), min(big_reports, count)))
            schedules.append([(feed, rng, big, step) for step in steps])
        # Feeds are written by different authors at the same time: interleave their uploads.
        for step in range(max(len(s) for s in schedules)):
            for schedule in schedules:
                if step < len(schedule):
                    self._run(*schedule[step])

    # Building ------------------------------------------------------------------------------

    def _create_collection(self, feed: Feed, index: int, seed: int) -> None:
        """models.py ``create_collection``: default objects, then the feed's identity."""
        self.upload(feed, default_objects(), checked=False, note=DEFAULT_NOTE, embedded=False)
        when = ts(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=index))
        identity = {
            "type": "identity",
            "spec_version": "2.1",
            "id": f"identity--{uuid.uuid5(NS, f'identity-{seed}-{index}')}",
            "created": when,
            "modified": when,
            "name": f"CTX producer {index}",
            "identity_class": "organization",
        }
        feed.identity_id = identity["id"]
        self.upload(feed, [identity], checked=False)
        self.producers[feed.id] = Producer(random.Random(f"{seed}-{index}"), index, identity["id"])

    @staticmethod
    def _schedule(
        rng: random.Random, reports: int, orphans: int, versions: int, old_versions: int
    ) -> list[tuple[str, int]]:
        """The order of one feed's uploads: reports, orphan batches in between, new versions
        some time after their report, the identity touched half-way, old versions last."""
        steps = [("report", i) for i in range(reports)]
        left = orphans
        while left > 0:
            count = min(left, rng.randint(1, 4))
            steps.insert(rng.randint(0, len(steps)), ("orphans", count))
            left -= count
        for i in rng.sample(range(reports), min(versions, reports)):
            after = steps.index(("report", i))
            steps.insert(rng.randint(after + 1, len(steps)), ("version", i))
        if reports >= 2:
            steps.insert(len(steps) // 2, ("touch", 0))
        steps += [("old", i) for i in rng.sample(range(reports), min(old_versions, reports))]
        return steps

    def _run(self, feed: Feed, rng: random.Random, big: set[int], step: tuple[str, int]) -> None:
        kind, arg = step
        producer = self.producers[feed.id]
        if kind == "report":
            size = rng.randint(55, 130) if arg in big else rng.randint(4, 10)
            identity = strip(self._latest_or_fail(feed, feed.identity_id))
            report_id, bundle = producer.report_bundle(size, copy.deepcopy(identity))
            feed.report_ids.append(report_id)
            self.upload(feed, bundle)
        elif kind == "orphans":
            objs = producer.orphans(arg)
            feed.orphan_ids += [o["id"] for o in objs if o["type"] != "extension-definition"]
            self.upload(feed, objs)
        elif kind == "version":
            self.update_report(feed, feed.report_ids[arg])
        elif kind == "touch":
            self.touch_record(feed, str(feed.identity_id))
        else:
            self.upload_old_version(feed, feed.report_ids[arg])

    @staticmethod
    def _latest_or_fail(feed: Feed, object_id: Any) -> dict[str, Any]:
        record = feed.latest_record(object_id)
        if record is None:
            raise KeyError(object_id)
        return record

    # The upload path -----------------------------------------------------------------------

    def upload(
        self,
        feed: Feed,
        objects: list[dict[str, Any]],
        *,
        same_time: bool = False,
        checked: bool = True,
        note: str = "",
        embedded: bool = True,
    ) -> list[Any]:
        """Store ``objects`` as one CTX bundle upload does; the ids that got a new record."""
        objects = [dict(o) for o in objects]
        if checked:
            objects = self._build_context(feed, objects)
        self.clock.next_upload()
        key_map: dict[Any, str] = {}
        vertices = [o for o in objects if o.get("type") != "relationship"]
        relationships = [o for o in objects if o.get("type") == "relationship"]
        for o in vertices:
            o.setdefault("_stix2arango_note", note)
        new_vertices = self._insert(feed.vertex, vertices, same_time, key_map)
        self._update_is_latest(feed, feed.vertex, new_vertices)
        for rel in relationships:
            rel.setdefault("_is_ref", False)
            rel.setdefault("_stix2arango_note", note)
            self._link(feed, rel, key_map)
        new_edges = self._insert(feed.edge, relationships, same_time, key_map)
        self._update_is_latest(feed, feed.edge, new_edges)
        inserted = new_vertices + new_edges
        if embedded:
            synthetic = []
            for obj in objects:
                if obj.get("id") not in inserted or obj.get("type") in SMO_TYPES:
                    continue
                if obj.get("type") == "relationship":
                    continue
                for rel_type, targets in refs_of(strip(obj)):
                    for target in targets:
                        if isinstance(target, str):
                            synthetic.append(self._synthetic(feed, obj, rel_type, target, key_map))
            self._update_is_latest(
                feed, feed.edge, self._insert(feed.edge, synthetic, same_time, {})
            )
        return inserted

    def _build_context(self, feed: Feed, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        last = {o.get("id"): i for i, o in enumerate(objects)}
        in_upload = set(last)
        kept = []
        for i, obj in enumerate(objects):
            if last[obj.get("id")] != i:
                continue  # duplicate_object: only the last one stays
            latest = feed.latest_record(obj.get("id"))
            if latest is not None and latest["_record_md5_hash"] == md5_of(obj):
                continue  # existing_object
            if obj.get("type") == "relationship" and not all(
                obj.get(end) in in_upload or feed.latest_record(obj.get(end)) is not None
                for end in ("source_ref", "target_ref")
            ):
                continue  # missing_source / missing_target
            kept.append(obj)
        return kept

    def _link(self, feed: Feed, rel: dict[str, Any], key_map: dict[Any, str]) -> None:
        for end, attr in (("source_ref", "_from"), ("target_ref", "_to")):
            rel[attr] = key_map.get(rel.get(end)) or f"{feed.vertex.name}/{rel.get(end)}"

    def _synthetic(
        self, feed: Feed, obj: dict[str, Any], rel_type: str, target: str, key_map: dict[Any, str]
    ) -> dict[str, Any]:
        source = obj.get("id")
        rel: dict[str, Any] = {"relationship_type": rel_type}
        for key in ("created", "modified", "object_marking_refs"):
            if key in obj:
                rel[key] = obj[key]
        rel.update(
            id=synthetic_id(rel_type, str(source), target),
            created_by_ref=S2A_IDENTITY_ID,
            source_ref=source,
            target_ref=target,
            _from=key_map.get(source) or f"{feed.vertex.name}/{source}",
            _to=key_map.get(target) or f"{feed.vertex.name}/{target}",
            _stix2arango_note="",
            _is_ref=True,
            type="relationship",
            spec_version="2.1",
            external_references=[
                {"source_name": "stix2arango", "description": "embedded-relationship"}
            ],
        )
        return rel

    def _insert(
        self,
        collection: Collection,
        objects: list[dict[str, Any]],
        same_time: bool,
        key_map: dict[Any, str],
    ) -> list[Any]:
        inserted = []
        unique = {(o.get("id"), o.get("_record_md5_hash") or md5_of(o)): o for o in objects}
        for (object_id, digest), obj in unique.items():
            now = self.clock.tick(same_time)
            key = f"{object_id}+{now}"
            existing = next(
                (r for r in collection.by_id.get(object_id, []) if r["_record_md5_hash"] == digest),
                None,
            )
            if existing is not None:
                key_map[object_id] = existing["_id"]
                continue
            record = dict(obj)
            record.update(
                _record_md5_hash=digest,
                _is_latest=False,
                _record_created=now,
                _record_modified=now,
                _key=key,
                _id=f"{collection.name}/{key}",
            )
            if record.get("type") == "relationship":
                record["_target_type"] = str(record.get("target_ref")).split("--")[0]
                record["_source_type"] = str(record.get("source_ref")).split("--")[0]
            if key in collection.by_key:
                continue  # insert_many(overwrite_mode="ignore") drops a clashing _key silently
            collection.add(record)
            key_map[object_id] = record["_id"]
            inserted.append(object_id)
        return inserted

    def _update_is_latest(self, feed: Feed, collection: Collection, ids: list[Any]) -> None:
        deprecated = []
        for object_id in set(ids):
            records = collection.by_id[object_id]
            with_modified = [r for r in records if r.get("modified") is not None]
            if with_modified:
                newest = max(str(r["modified"]) for r in with_modified)
                pool = [r for r in with_modified if str(r["modified"]) == newest]
            else:
                newest, pool = None, records
            top = max(r["_record_modified"] for r in pool)
            for r in records:
                mine = None if r.get("modified") is None else str(r["modified"])
                latest = mine == newest and r["_record_modified"] == top
                if r["_is_latest"] and not latest:
                    deprecated.append(r["_id"])
                r["_is_latest"] = latest
        # deprecate_relationships: edges from a deprecated record, and edges from those.
        while deprecated:
            edges = [e for d in deprecated for e in feed.edge.by_from.get(d, []) if e["_is_latest"]]
            for e in edges:
                e["_is_latest"] = False
            deprecated = [e["_id"] for e in edges]
        collection.changed()
        feed.edge.changed()

    # Changes tests make ---------------------------------------------------------------------

    def update_report(self, feed: Feed, report_id: str) -> str:
        latest = copy.deepcopy(strip(self._latest_or_fail(feed, report_id)))
        modified = parse_ts(latest["modified"]) + timedelta(days=1)
        latest["modified"] = ts(max(modified, self.clock.now))
        latest["description"] = f"{latest.get('description', '')} Updated."
        self.upload(feed, [latest])
        return report_id

    def upload_old_version(self, feed: Feed, object_id: str) -> str:
        latest = copy.deepcopy(strip(self._latest_or_fail(feed, object_id)))
        if "modified" not in latest:
            raise ValueError(f"{object_id} has no modified: it has no older version")
        newest = parse_ts(latest["modified"])
        created = parse_ts(latest.get("created", latest["modified"]))
        # Between created and the latest modified; a day earlier when they are equal (the server
        # checks neither).
        older = created + (newest - created) / 2 if created < newest else newest - timedelta(days=1)
        latest["modified"] = ts(older)
        latest["description"] = f"{latest.get('description', '')} Earlier draft."
        self.upload(feed, [latest])
        return object_id

    def touch_record(self, feed: Feed, object_id: str, *, whole_second: bool = False) -> str:
        """models.py ``update_identities``: ``UPDATE`` every record of the id with a new
        ``_record_modified`` (``timezone.now().isoformat()`` with ``Z``), content unchanged."""
        self.clock.next_upload()
        if whole_second:
            self.clock.now = (self.clock.now + timedelta(seconds=1)).replace(microsecond=0)
        stamp = self.clock.now.isoformat().replace("+00:00", "Z")
        for collection in (feed.vertex, feed.edge):
            for record in collection.by_id.get(object_id, []):
                record["_record_modified"] = stamp
            collection.changed()
        return stamp
