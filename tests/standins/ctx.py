"""A stand-in for the Cyber Threat Exchange API (``shared/REFERENCE.md`` §1) on 127.0.0.1.

A real ``ThreadingHTTPServer`` in a background thread, serving seeded, deterministic, realistic STIX 2.1
feeds: reports with related SDOs, SCOs, dogesec custom observables (with their
``extension-definition--`` objects), relationships, and orphan objects that belong to no report.

It answers ``v1/subscriptions/`` (one inactive subscription included), ``v1/feeds/``,
``v1/feeds/{id}/``, ``v1/feeds/{id}/objects/`` in the cursor or the page-number style (switchable at
run time via :attr:`CTXStandIn.style`), and ``v1/feeds/{id}/objects/{id}/bundle/``. Page sizes are
clamped (50, bundles 100) as the real service does; cursors compare ``_record_modified`` strictly
greater, and many objects share one ``_record_modified`` across page boundaries.

Tests inject faults (:meth:`CTXStandIn.inject`), update reports between passes
(:meth:`CTXStandIn.update_report`), add hostile ids, and read :attr:`CTXStandIn.requests`.

Standalone, for demos::

    python -m tests.standins.ctx --port 8765 --feeds 3 --reports 30
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

NS = uuid.UUID("0c7b7f0e-3d7c-4c4e-9c43-6a1f3f0d9a11")
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
OBJECTS_MAX = 50
BUNDLE_MAX = 100
DEFAULT_API_KEY = "ctx-standin-key-6f1d2a9b8c"

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


def ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime(TS_FORMAT)


@dataclass
class Feed:
    """One feed of the stand-in and its objects (``objects`` keyed by id, each with ``_record_*``)."""

    id: str
    name: str
    status: str = "active"
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_ids: list[str] = field(default_factory=list)
    orphan_ids: list[str] = field(default_factory=list)
    # Extra (possibly hostile) raw objects served in the bundle of a report.
    bundle_extra: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Fault:
    """A fault served instead of (or before) the normal answer, ``times`` times."""

    kind: str  # "status" | "latency" | "drop" | "malformed" | "redirect" | "truncated"
    path_contains: str = ""
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    location: str = ""
    #: "truncated": the Content-Length announced; the body is cut short after 64 KiB and closed.
    announced: int = 0


@dataclass(frozen=True)
class Request:
    """One request the stand-in received: path and query (single values)."""

    path: str
    query: dict[str, str]
    had_key: bool
    at: float  # time.monotonic() when received


class _Generator:
    """Builds realistic STIX 2.1 objects from a seeded RNG."""

    def __init__(self, rng: random.Random, feed_index: int) -> None:
        self.rng = rng
        self.feed_index = feed_index
        self.clock = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=feed_index)

    def uid(self, kind: str) -> str:
        return f"{kind}--{uuid.UUID(int=self.rng.getrandbits(128), version=4)}"

    def tick(self) -> datetime:
        self.clock += timedelta(
            seconds=self.rng.randint(1, 3600), microseconds=self.rng.randint(0, 999_999)
        )
        return self.clock

    def word(self) -> str:
        return self.rng.choice(
            [
                "amber",
                "basalt",
                "cobalt",
                "dune",
                "ember",
                "fjord",
                "garnet",
                "harbor",
                "iris",
                "jade",
            ]
        ) + str(self.rng.randint(1, 999))

    def sdo(self, kind: str, identity: str, refs: list[str]) -> dict[str, Any]:
        when = ts(self.tick())
        obj: dict[str, Any] = {
            "type": kind,
            "spec_version": "2.1",
            "id": self.uid(kind),
            "created": when,
            "modified": when,
            "created_by_ref": identity,
        }
        name = f"{kind} {self.word()}"
        r = self.rng
        extra: dict[str, Any] = {
            "attack-pattern": {
                "name": name,
                "external_references": [
                    {"source_name": "mitre-attack", "external_id": f"T{r.randint(1000, 1999)}"}
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
                "pattern": f"[ipv4-addr:value = '198.51.100.{r.randint(1, 254)}']",
                "pattern_type": "stix",
                "valid_from": when,
            },
            "infrastructure": {"name": name, "infrastructure_types": ["command-and-control"]},
            "intrusion-set": {"name": name, "aliases": [self.word()]},
            "location": {
                "name": name,
                "region": "europe",
                "country": r.choice(["DE", "FR", "GB", "NL"]),
            },
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
                "number_observed": r.randint(1, 50),
                "object_refs": refs,
            },
            "opinion": {"opinion": "agree", "explanation": "Confirmed.", "object_refs": refs},
            "threat-actor": {"name": name, "threat_actor_types": ["crime-syndicate"]},
            "tool": {"name": name, "tool_types": ["remote-access"]},
            "vulnerability": {
                "name": f"CVE-2024-{r.randint(1000, 99999)}",
                "external_references": [
                    {"source_name": "cve", "external_id": f"CVE-2024-{r.randint(1000, 99999)}"}
                ],
            },
        }[kind]
        obj.update(extra)
        return obj

    def sco(self, kind: str, ext_ids: dict[str, str]) -> dict[str, Any]:
        r = self.rng
        obj: dict[str, Any] = {"type": kind, "spec_version": "2.1", "id": self.uid(kind)}
        hexes = "".join(r.choice("0123456789abcdef") for _ in range(64))
        extra: dict[str, Any] = {
            "artifact": {
                "mime_type": "application/octet-stream",
                "payload_bin": base64.b64encode(hexes.encode()).decode(),
            },
            "autonomous-system": {"number": r.randint(1, 65000), "name": f"AS {self.word()}"},
            "directory": {"path": f"C:\\Users\\{self.word()}\\AppData"},
            "domain-name": {"value": f"{self.word()}.example.com"},
            "email-addr": {"value": f"{self.word()}@example.org"},
            "email-message": {"is_multipart": False, "subject": f"Invoice {self.word()}"},
            "file": {"name": f"{self.word()}.exe", "hashes": {"SHA-256": hexes}},
            "ipv4-addr": {"value": f"203.0.113.{r.randint(1, 254)}"},
            "ipv6-addr": {"value": f"2001:db8::{r.randint(1, 65535):x}"},
            "mac-addr": {"value": ":".join(f"{r.randint(0, 255):02x}" for _ in range(6))},
            "mutex": {"name": f"Global\\{self.word()}"},
            "network-traffic": {"protocols": ["tcp"], "dst_port": r.randint(1, 65535)},
            "process": {"pid": r.randint(100, 9999), "command_line": f"{self.word()}.exe -k"},
            "software": {"name": self.word(), "vendor": "Example Corp", "version": "1.0"},
            "url": {"value": f"https://{self.word()}.example.net/payload"},
            "user-account": {"user_id": str(r.randint(1000, 9999)), "account_login": self.word()},
            "windows-registry-key": {"key": f"HKEY_LOCAL_MACHINE\\Software\\{self.word()}"},
            "x509-certificate": {
                "serial_number": hexes[:16],
                "issuer": "CN=Example CA",
                "subject": f"CN={self.word()}",
            },
            "bank-account": {"iban": f"DE{r.randint(10**19, 10**20 - 1)}", "bank": "Example Bank"},
            "cryptocurrency-wallet": {"value": "bc1q" + hexes[:38]},
            "payment-card": {"value": str(r.randint(4 * 10**15, 5 * 10**15 - 1)), "scheme": "VISA"},
            "phone-number": {"number": f"+4930{r.randint(1000000, 9999999)}", "country": "DE"},
            "user-agent": {"string": f"Mozilla/5.0 ({self.word()})"},
        }[kind]
        obj.update(extra)
        if kind in CUSTOM_KINDS:
            obj["extensions"] = {ext_ids[kind]: {"extension_type": "new-sco"}}
        return obj

    def make(
        self, kind: str, identity: str, refs: list[str], ext_ids: dict[str, str]
    ) -> dict[str, Any]:
        if kind in SDO_KINDS:
            return self.sdo(kind, identity, refs)
        return self.sco(kind, ext_ids)


class CTXStandIn:
    """The stand-in server. Use as a context manager; ``base_url`` and ``api_key`` for clients."""

    def __init__(
        self,
        *,
        feeds: int = 2,
        reports: int = 6,
        orphans: int = 12,
        seed: int = 1,
        api_key: str = DEFAULT_API_KEY,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.style = "cursor"
        # When set, cursor-style ``next`` values are full URLs with this prefix (scheme://host:port).
        self.next_url_origin: str | None = None
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._rng = random.Random(seed)
        self.feeds: dict[str, Feed] = {}
        self._gens: dict[str, _Generator] = {}
        for index in range(feeds + 1):
            feed_id = str(uuid.uuid5(NS, f"feed-{seed}-{index}"))
            inactive = index == feeds
            feed = Feed(
                feed_id,
                f"Stand-in feed {index}" + (" (inactive)" if inactive else ""),
                status="inactive" if inactive else "active",
            )
            self.feeds[feed_id] = feed
            self._populate(feed, index, reports, orphans, seed)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.standin = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def active_feed_ids(self) -> list[str]:
        return [f.id for f in self.feeds.values() if f.status == "active"]

    @property
    def inactive_feed_ids(self) -> list[str]:
        return [f.id for f in self.feeds.values() if f.status != "active"]

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> CTXStandIn:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ctx-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> CTXStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Data -----------------------------------------------------------------------------------

    def _populate(self, feed: Feed, index: int, reports: int, orphans: int, seed: int) -> None:
        gen = _Generator(random.Random(f"{seed}-{index}"), index)
        self._gens[feed.id] = gen
        created: list[dict[str, Any]] = []
        identity = gen.sdo("identity", "", [])
        identity.pop("created_by_ref")
        identity["name"] = f"CTX producer {index}"
        created.append(identity)
        ext_ids: dict[str, str] = {}
        for kind in CUSTOM_KINDS:
            when = ts(gen.tick())
            ext = {
                "type": "extension-definition",
                "spec_version": "2.1",
                "id": f"extension-definition--{uuid.uuid5(NS, kind)}",
                "created": when,
                "modified": when,
                "created_by_ref": identity["id"],
                "name": kind,
                "description": f"dogesec custom observable {kind}",
                "schema": f"https://raw.githubusercontent.com/muchdogesec/stix2extensions/main/schemas/scos/{kind}.json",
                "version": "1.0",
                "extension_types": ["new-sco"],
            }
            ext_ids[kind] = ext["id"]
            created.append(ext)
        kind_cursor = 0
        for _ in range(reports):
            members: list[dict[str, Any]] = []
            for _k in range(9):
                kind = ALL_KINDS[kind_cursor % len(ALL_KINDS)]
                kind_cursor += 1
                if kind == "identity":
                    kind = ALL_KINDS[kind_cursor % len(ALL_KINDS)]
                    kind_cursor += 1
                refs = [m["id"] for m in members[-2:]] or [identity["id"]]
                members.append(gen.make(kind, identity["id"], refs, ext_ids))
            if kind_cursor % 4 == 0:
                # Some reports also carry a second identity, so that kind is in report bundles too.
                members.append(gen.sdo("identity", identity["id"], []))
            sdos = [m for m in members if m["type"] in SDO_KINDS]
            scos = [m for m in members if m["type"] not in SDO_KINDS]
            rels = []
            for source, target in zip(sdos, (scos + sdos[1:])[: len(sdos)], strict=False):
                when = ts(gen.tick())
                rels.append(
                    {
                        "type": "relationship",
                        "spec_version": "2.1",
                        "id": gen.uid("relationship"),
                        "created": when,
                        "modified": when,
                        "created_by_ref": identity["id"],
                        "relationship_type": "related-to",
                        "source_ref": source["id"],
                        "target_ref": target["id"],
                    }
                )
            when_dt = gen.tick()
            when = ts(when_dt)
            report = {
                "type": "report",
                "spec_version": "2.1",
                "id": gen.uid("report"),
                "created": when,
                "modified": when,
                "created_by_ref": identity["id"],
                "name": f"Report {gen.word()}",
                "description": "Threat report generated by the CTX stand-in.",
                "published": when,
                "report_types": ["threat-report"],
                "labels": ["stand-in"],
                "object_refs": [m["id"] for m in members + rels],
                "external_references": [
                    {
                        "source_name": "cyberthreatexchange",
                        "url": f"https://example.invalid/{gen.word()}",
                    }
                ],
            }
            created.extend(members + rels + [report])
            feed.report_ids.append(report["id"])
        for _ in range(orphans):
            kind = ALL_KINDS[kind_cursor % len(ALL_KINDS)]
            kind_cursor += 1
            obj = gen.make(kind, identity["id"], [identity["id"]], ext_ids)
            created.append(obj)
            feed.orphan_ids.append(obj["id"])
        # Record times in groups that share one _record_modified (up to 40 objects, so groups straddle
        # the 50-object page boundary), as CTX's bulk indexing does.
        record = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(days=index)
        position = 0
        while position < len(created):
            size = gen.rng.choice([1, 2, 3, 7, 13, 29, 40])
            record += timedelta(
                seconds=gen.rng.randint(1, 600), microseconds=gen.rng.randint(0, 999_999)
            )
            for obj in created[position : position + size]:
                obj["_record_created"] = ts(record)
                obj["_record_modified"] = ts(record)
            position += size
        for obj in created:
            feed.objects[obj["id"]] = obj

    def _next_record_time(self, feed: Feed) -> datetime:
        newest = max(
            datetime.strptime(o["_record_modified"], TS_FORMAT) for o in feed.objects.values()
        )
        return newest.replace(tzinfo=UTC) + timedelta(seconds=1, microseconds=123)

    def update_report(self, feed_id: str, report_id: str | None = None) -> str:
        """Change a report's content and bump its ``modified`` and ``_record_modified``."""
        with self._lock:
            feed = self.feeds[feed_id]
            report_id = report_id or feed.report_ids[0]
            report = feed.objects[report_id]
            record = self._next_record_time(feed)
            modified = datetime.strptime(report["modified"], TS_FORMAT).replace(tzinfo=UTC)
            report["modified"] = ts(max(modified + timedelta(days=1), record))
            report["description"] = f"{report['description']} Updated."
            report["_record_modified"] = ts(record)
            return report_id

    def touch_record(self, feed_id: str, object_id: str) -> None:
        """Bump only ``_record_modified`` (CTX re-indexing without a content change)."""
        with self._lock:
            feed = self.feeds[feed_id]
            feed.objects[object_id]["_record_modified"] = ts(self._next_record_time(feed))

    def add_objects(self, feed_id: str, count: int, *, same_record_time: bool = True) -> list[str]:
        """Add ``count`` orphan indicators, all sharing one ``_record_modified`` by default."""
        with self._lock:
            feed = self.feeds[feed_id]
            gen = self._gens[feed_id]
            record = self._next_record_time(feed)
            identity = next(o["id"] for o in feed.objects.values() if o["type"] == "identity")
            ids = []
            for i in range(count):
                obj = gen.sdo("indicator", identity, [])
                when = record if same_record_time else record + timedelta(seconds=i)
                obj["_record_created"] = obj["_record_modified"] = ts(when)
                feed.objects[obj["id"]] = obj
                feed.orphan_ids.append(obj["id"])
                ids.append(obj["id"])
            return ids

    def add_raw(self, feed_id: str, obj: dict[str, Any]) -> None:
        """Add an object as is (hostile ids included), newest in the feed."""
        with self._lock:
            feed = self.feeds[feed_id]
            obj.setdefault("_record_modified", ts(self._next_record_time(feed)))
            feed.objects[obj["id"]] = obj

    def add_to_bundle(self, feed_id: str, report_id: str, obj: dict[str, Any]) -> None:
        """Serve ``obj`` as is in the bundle of ``report_id`` (for hostile-id tests)."""
        with self._lock:
            self.feeds[feed_id].bundle_extra.setdefault(report_id, []).append(obj)

    def inject(self, kind: str, *, path_contains: str = "", times: int = 1, **kwargs: Any) -> Fault:
        """Serve a fault ``times`` times on requests whose path contains ``path_contains``."""
        fault = Fault(kind, path_contains, times, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def report_bundle_ids(self, feed_id: str, report_id: str) -> set[str]:
        """Ids a correct report bundle file holds: the report and everything its bundle serves."""
        with self._lock:
            feed = self.feeds[feed_id]
            return {o["id"] for o in self._bundle_objects(feed, report_id)} | {report_id}

    def expected_ids(self, feed_id: str) -> set[str]:
        """Every id of the feed (what a complete import must hold)."""
        with self._lock:
            return set(self.feeds[feed_id].objects)

    def object(self, feed_id: str, object_id: str) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.feeds[feed_id].objects[object_id]))

    def queries(self, path_contains: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path_contains in r.path]

    # Serving ------------------------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.path_contains in path:
                    fault.times -= 1
                    return fault
        return None

    def handle(self, req: _Handler) -> None:
        split = urlsplit(req.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        key_ok = req.headers.get("API-KEY") == self.api_key
        with self._lock:
            self.requests.append(Request(path, query, key_ok, time.monotonic()))
        fault = self._take_fault(path)
        if fault is not None:
            if fault.kind == "latency":
                time.sleep(fault.delay)
            elif fault.kind == "drop":
                req.close_connection = True
                return
            elif fault.kind == "malformed":
                req.send_raw(200, b'{"objects": [{"id": "report--', "application/json")
                return
            elif fault.kind == "redirect":
                req.send_json(302, {"detail": "moved"}, {"Location": fault.location})
                return
            elif fault.kind == "truncated":
                req.send_truncated(fault.announced)
                return
            elif fault.kind == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                req.send_json(fault.status, {"detail": "injected fault"}, headers)
                return
        if not key_ok:
            req.send_json(401, {"detail": "Invalid API key."})
            return
        parts = [p for p in path.split("/") if p]
        with self._lock:
            status, body = self._route(parts, query)
        req.send_json(status, body)

    def _route(self, parts: list[str], q: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if parts[:1] != ["v1"]:
            return 404, {"detail": "Not found."}
        rest = parts[1:]
        if rest == ["subscriptions"]:
            items = [
                {
                    "feed": {"id": f.id, "name": f.name, "description": f"{f.name} description"},
                    "subscription": {"status": f.status, "created": "2025-01-01T00:00:00.000000Z"},
                }
                for f in self.feeds.values()
            ]
            return 200, self._numbered(items, q, "results", OBJECTS_MAX)
        if rest == ["feeds"]:
            items = [{"id": f.id, "name": f.name} for f in self.feeds.values()]
            return 200, self._numbered(items, q, "feeds", OBJECTS_MAX)
        if len(rest) < 2 or rest[0] != "feeds":
            return 404, {"detail": "Not found."}
        feed = self.feeds.get(rest[1])
        if feed is None or feed.status != "active":
            return 403, {"detail": "You are not subscribed to this feed."}
        if len(rest) == 2:
            return 200, {"id": feed.id, "name": feed.name}
        if rest[2:] == ["objects"]:
            return 200, self._objects(feed, q)
        if len(rest) == 5 and rest[2] == "objects" and rest[4] == "bundle":
            if rest[3] not in feed.objects:
                return 404, {"detail": "Not found."}
            return 200, self._bundle(feed, rest[3], q)
        return 404, {"detail": "Not found."}

    def _numbered(
        self, items: list[Any], q: dict[str, str], key: str, maximum: int
    ) -> dict[str, Any]:
        size = max(1, min(int(q.get("page_size") or maximum), maximum))
        number = max(1, int(q.get("page") or 1))
        chunk = items[(number - 1) * size : number * size]
        return {
            "page_size": size,
            "page_number": number,
            "page_results_count": len(chunk),
            "total_results_count": len(items),
            key: chunk,
        }

    def _objects(self, feed: Feed, q: dict[str, str]) -> dict[str, Any]:
        items = list(feed.objects.values())
        if q.get("types"):
            wanted = set(q["types"].split(","))
            items = [o for o in items if o.get("type") in wanted]
        if self.style == "page":
            if q.get("updated_since"):
                items = [o for o in items if o["_record_modified"] > q["updated_since"]]
            items.sort(key=_listing_order)
            return self._numbered(items, q, "objects", OBJECTS_MAX)
        if q.get("added_after"):
            items = [o for o in items if o["_record_modified"] > q["added_after"]]
        limit = max(1, min(int(q.get("limit") or OBJECTS_MAX), OBJECTS_MAX))
        # Only the page is sorted out of the rest (a sort of the whole feed per request made the
        # stand-in, not the client, the bottleneck of parallel listings in make bench).
        chunk = heapq.nsmallest(limit, items, key=_listing_order)
        nxt: str | None = chunk[-1]["_record_modified"] if chunk else None
        if nxt is not None and self.next_url_origin is not None:
            params = {"added_after": nxt, "limit": limit}
            if q.get("types"):
                params["types"] = q["types"]
            nxt = f"{self.next_url_origin}/v1/feeds/{feed.id}/objects/?{urlencode(params)}"
        return {"objects": chunk, "next": nxt, "size": len(chunk)}

    def _bundle_objects(self, feed: Feed, object_id: str) -> list[dict[str, Any]]:
        root = feed.objects[object_id]
        ids: set[str] = set(root.get("object_refs", []))
        if root.get("created_by_ref"):
            ids.add(root["created_by_ref"])
        ids |= {o["id"] for o in feed.objects.values() if object_id in o.get("object_refs", [])}
        # The real service includes the object itself in some answers and not in others.
        if int(object_id[-1], 16) % 2 == 0:
            ids.add(object_id)
        members = [feed.objects[i] for i in ids if i in feed.objects]
        for member in list(members):
            for ext in member.get("extensions", {}):
                if ext in feed.objects:
                    members.append(feed.objects[ext])
        unique = {o["id"]: o for o in members}
        return sorted(unique.values(), key=lambda o: o["id"]) + feed.bundle_extra.get(object_id, [])

    def _bundle(self, feed: Feed, object_id: str, q: dict[str, str]) -> dict[str, Any]:
        items = self._bundle_objects(feed, object_id)
        if self.style == "page":
            return self._numbered(items, q, "objects", OBJECTS_MAX)
        limit = max(1, min(int(q.get("limit") or BUNDLE_MAX), BUNDLE_MAX))
        offset = 0
        if q.get("cursor"):
            offset = int(base64.urlsafe_b64decode(q["cursor"].encode()).decode().split(":")[1])
        chunk = items[offset : offset + limit]
        more = offset + limit < len(items)
        token = (
            base64.urlsafe_b64encode(f"offset:{offset + limit}".encode()).decode() if more else None
        )
        return {"objects": chunk, "next": token, "count": len(chunk)}


def _listing_order(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["_record_modified"], obj["id"]


class _Handler(BaseHTTPRequestHandler):
    server_version = "CTXStandIn/1.0"
    # Headers and body are two writes: without TCP_NODELAY the body can wait for a delayed ACK
    # (see the OpenCTI stand-in); latency is what inject("latency") adds, nothing more.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.server.standin.handle(self)  # type: ignore[attr-defined]

    def send_raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_truncated(self, announced: int) -> None:
        """A 200 answer announcing ``announced`` bytes of objects that stops after 64 KiB."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        filler = b'{"type": "indicator", "id": "indicator--00000000-0000-4000-8000-000000000000"},'
        body = b'{"objects": [' + filler * (65536 // len(filler))
        self.wfile.write(body[: max(0, announced - 1)])
        self.wfile.flush()
        self.close_connection = True

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.send_raw(status, json.dumps(body).encode(), "application/json", headers)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="CTX API stand-in on 127.0.0.1 (for tests and demos)."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--feeds", type=int, default=3)
    parser.add_argument("--reports", type=int, default=30)
    parser.add_argument("--orphans", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--style", choices=["cursor", "page"], default="cursor")
    args = parser.parse_args(argv)
    standin = CTXStandIn(
        feeds=args.feeds,
        reports=args.reports,
        orphans=args.orphans,
        seed=args.seed,
        api_key=args.api_key,
        port=args.port,
    )
    standin.style = args.style
    print(f"base_url={standin.base_url}", flush=True)
    print(f"api_key={standin.api_key}", flush=True)
    print(f"active_feed_ids={','.join(standin.active_feed_ids)}", flush=True)
    print(f"inactive_feed_ids={','.join(standin.inactive_feed_ids)}", flush=True)
    try:
        standin._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        standin._server.server_close()


if __name__ == "__main__":
    main()
