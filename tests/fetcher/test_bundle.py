"""Bundle assembly of fetcher/bundle.py: the same objects always give the same bytes."""

from __future__ import annotations

import json

from fetcher.bundle import BundleBuilder, bundle_json, canonical_json, make_bundle
from shared.durable import sha256_bytes


def test_bundle_is_deterministic() -> None:
    a = {"type": "indicator", "id": "indicator--1c2d3e4f-0000-4000-8000-000000000001", "x": 1}
    b = {"type": "malware", "id": "malware--1c2d3e4f-0000-4000-8000-000000000002", "y": [1, 2]}
    one = canonical_json(make_bundle([a, b, a]))
    two = canonical_json(make_bundle([b, a]))
    assert one == two
    bundle = json.loads(one)
    assert bundle["type"] == "bundle"
    assert bundle["id"].startswith("bundle--")
    assert [o["id"] for o in bundle["objects"]] == [a["id"], b["id"]]
    changed = canonical_json(make_bundle([a, {**b, "y": [2, 1]}]))
    assert json.loads(changed)["id"] != bundle["id"]


def test_bundle_json_is_canonical_json_of_make_bundle() -> None:
    # The fetcher writes bundle_json(objects) (memory): it must stay byte-identical to
    # the canonical serialisation of make_bundle, or unchanged reports would look new.
    objects = [
        {"type": "indicator", "id": "indicator--b", "modified": "2024-01-02T00:00:00Z", "n": "é✓"},
        {
            "type": "indicator",
            "id": "indicator--a",
            "modified": "2024-01-01T00:00:00Z",
            "q": 'a"\\',
        },
        {"type": "indicator", "id": "indicator--a", "modified": "2024-01-01T00:00:00Z", "q": "x"},
        {"type": "identity", "id": "identity--c", "nested": {"z": 1, "a": [2, {"b": None}]}},
        {"type": "indicator", "id": "indicator--b", "modified": "2024-01-02T00:00:00Z", "n": "é✓"},
        {"type": "x-no-id", "value": "\n\t"},
    ]
    assert bundle_json(objects) == canonical_json(make_bundle(objects))
    assert bundle_json(objects[:1]) == canonical_json(make_bundle(objects[:1]))


def test_bundle_builder_matches_bundle_json_and_each_objects_sha() -> None:
    objects = [
        {"type": "indicator", "id": "indicator--b", "modified": "2024-01-02T00:00:00Z", "n": "é"},
        {"type": "indicator", "id": "indicator--a", "modified": "2024-01-01T00:00:00Z", "q": 1},
        {"type": "indicator", "id": "indicator--a", "modified": "2024-01-01T00:00:00Z", "q": 2},
        {"type": "indicator", "id": "indicator--b", "modified": "2024-01-02T00:00:00Z", "n": "é"},
    ]
    builder = BundleBuilder()
    for obj in objects:
        builder.add(obj)
    assert b"".join(builder.chunks()) == bundle_json(objects)
    # The ledger's entry per id: the SHA-256 of the last object of that id, canonically.
    assert builder.object_shas == {
        "indicator--a": sha256_bytes(canonical_json(objects[2])),
        "indicator--b": sha256_bytes(canonical_json(objects[3])),
    }
