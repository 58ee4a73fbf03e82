"""The authors of the CTX stand-in's feeds: seeded, realistic STIX 2.1 content (no server fields),
and stix2arango's default objects (``default_objects``) that every new collection starts with.

What the server does with what they upload is :mod:`tests.standins.ctx_world`.
"""

from __future__ import annotations

import base64
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.standins.ctx_records import (
    DOGESEC_IDENTITY_ID,
    NS,
    S2A_IDENTITY_ID,
    TLP2_CLEAR,
    TLP2_GREEN,
    parse_ts,
    ts,
)

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
