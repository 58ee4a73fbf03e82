"""Bundle assembly of fetcher/files/bundle.py: the same objects always give the same bytes."""

from __future__ import annotations

import json
from typing import Any

from fetcher.files.bundle import BundleBuilder
from fetcher.stix import canonical_json


def _bundle(objects: list[dict[str, Any]]) -> bytes:
    builder = BundleBuilder()
    for obj in objects:
        builder.add_canonical(canonical_json(obj), str(obj["id"]))
    return b"".join(builder.chunks())


def test_the_same_objects_in_any_order_give_the_same_bytes() -> None:
    a = {"type": "indicator", "id": "indicator--1c2d3e4f-0000-4000-8000-000000000001", "x": 1}
    b = {"type": "malware", "id": "malware--1c2d3e4f-0000-4000-8000-000000000002", "y": [1, 2]}
    one = _bundle([a, b, a])
    assert one == _bundle([b, a])
    bundle = json.loads(one)
    assert bundle["type"] == "bundle"
    assert bundle["id"].startswith("bundle--")
    assert [o["id"] for o in bundle["objects"]] == [a["id"], b["id"]]
    # Canonical: the bytes are what canonical_json gives for the parsed bundle.
    assert one == canonical_json(bundle)
    changed = json.loads(_bundle([a, {**b, "y": [2, 1]}]))
    assert changed["id"] != bundle["id"]


def test_versions_of_one_id_are_ordered_by_their_bytes() -> None:
    objects = [
        {"type": "indicator", "id": "indicator--b", "modified": "2024-01-02T00:00:00Z", "n": "é✓"},
        {"type": "indicator", "id": "indicator--a", "modified": "2024-01-01T00:00:00Z", "q": "x"},
        {
            "type": "indicator",
            "id": "indicator--a",
            "modified": "2024-01-01T00:00:00Z",
            "q": 'a"\\',
        },
        {"type": "identity", "id": "identity--c", "nested": {"z": 1, "a": [2, {"b": None}]}},
    ]
    data = _bundle(objects)
    assert data == _bundle(list(reversed(objects)))
    bundle = json.loads(data)
    assert data == canonical_json(bundle)
    assert [o["id"] for o in bundle["objects"]] == [
        "identity--c",
        "indicator--a",
        "indicator--a",
        "indicator--b",
    ]
    # An empty builder after chunks(): the next bundle starts from nothing.
    builder = BundleBuilder()
    builder.add_canonical(canonical_json(objects[0]), "indicator--b")
    builder.chunks()
    assert json.loads(b"".join(builder.chunks()))["objects"] == []
