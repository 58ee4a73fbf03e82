"""What a spool written during live writes must hold, checked against the stand-in's ground truth
once its writer settled (:mod:`tests.standins.ctx_live`).

Each check returns the problems it found, one line each, so a failing test shows how many and
which: :func:`findings` gathers them, :func:`summary` prints counts and a few examples.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetcher.stix import is_storage_artefact
from shared.durable import sha256_bytes
from shared.layout import FEED_OBJECTS_SUBJECT, parse_relative_path, walk_bundles
from tests.standins.ctx import CTXStandIn

#: What makes a report file self-contained (the refs of the report itself).
REPORT_REFS = ("object_refs", "created_by_ref", "object_marking_refs")


@dataclass(frozen=True)
class SpoolFile:
    rel: str
    feed_id: str
    subject: str
    sha256: str
    data: bytes
    objects: list[dict[str, Any]]

    @property
    def ids(self) -> set[str]:
        return {str(o.get("id")) for o in self.objects}


def read_spool(spool_dir: Path) -> list[SpoolFile]:
    files = []
    for entry in walk_bundles(spool_dir / "incoming"):
        feed_id, name = parse_relative_path(entry.relative)
        data = entry.path.read_bytes()
        bundle = json.loads(data)
        assert bundle.get("type") == "bundle", entry.relative
        files.append(
            SpoolFile(
                entry.relative.as_posix(),
                feed_id,
                name.subject,
                name.sha256,
                data,
                bundle["objects"],
            )
        )
    return files


def content(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def refs_of_report(report: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in REPORT_REFS:
        value = report.get(key)
        out += [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]
    return out


def findings(standin: CTXStandIn, files: list[SpoolFile]) -> dict[str, list[str]]:
    """Every problem of the spool ``files`` against the stand-in's settled world, by check."""
    out: dict[str, list[str]] = {
        "file name does not match its content": [],
        "report missing from its own file": [],
        "report file not self-contained": [],
        "latest version in no file": [],
        "report version in two files": [],
        "object version in two feed-level files": [],
        "file content published twice": [],
        "stix2arango artefact in a file": [],
    }
    latest = {f: standin.latest_objects(f) for f in standin.active_feed_ids}
    versions: dict[str, set[tuple[str, str]]] = {f: set() for f in latest}
    reports: Counter[tuple[str, str, str]] = Counter()
    objects: Counter[tuple[str, str, str]] = Counter()
    for f in files:
        if sha256_bytes(f.data) != f.sha256:
            out["file name does not match its content"].append(f.rel)
        held = latest[f.feed_id]
        versions[f.feed_id] |= {(str(o.get("id")), content(o)) for o in f.objects}
        out["stix2arango artefact in a file"] += [
            f"{f.rel}: {o['id']}" for o in f.objects if is_storage_artefact(o)
        ]
        if f.subject == FEED_OBJECTS_SUBJECT:
            objects.update((f.feed_id, str(o.get("id")), content(o)) for o in f.objects)
            continue
        report = next((o for o in f.objects if o.get("id") == f.subject), None)
        if report is None:
            out["report missing from its own file"].append(f.rel)
            continue
        reports[(f.feed_id, f.subject, str(report.get("modified")))] += 1
        missing = sorted({r for r in refs_of_report(report) if r in held} - f.ids)
        if missing:
            out["report file not self-contained"].append(
                f"{f.rel} (report modified {report.get('modified')}): {len(missing)} missing, "
                f"e.g. {missing[:3]}"
            )
    for feed_id, objs in latest.items():
        ids_seen = {i for i, _ in versions[feed_id]}
        for object_id, obj in objs.items():
            if (object_id, content(obj)) not in versions[feed_id]:
                how = "an older version only" if object_id in ids_seen else "absent"
                out["latest version in no file"].append(f"{feed_id}: {object_id} ({how})")
    out["report version in two files"] = [
        f"{f}: {r} modified {m} in {n} files" for (f, r, m), n in reports.items() if n > 1
    ]
    out["object version in two feed-level files"] = [
        f"{f}: {i} in {n} files" for (f, i, _), n in objects.items() if n > 1
    ]
    shas = Counter(f.sha256 for f in files)
    out["file content published twice"] = [f"{s} x{n}" for s, n in shas.items() if n > 1]
    return out


def summary(found: dict[str, list[str]]) -> str:
    lines = []
    for check, problems in found.items():
        if problems:
            lines.append(f"{check}: {len(problems)}")
            lines += [f"    {p}" for p in problems[:4]]
    return "\n".join(lines)
