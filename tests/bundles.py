"""STIX bundles for tests that need spool files without running the fetcher."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from fetcher.stix import canonical_json
from shared.durable import sha256_bytes

_NAMESPACE = uuid.UUID("0d3c6f7e-8a4b-5c2d-9e1f-2a3b4c5d6e7f")


def make_bundle(objects: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A STIX 2.1 bundle of ``objects`` (exact duplicates dropped, sorted by id), whose id is
    derived from them: the same objects give the same bytes under :func:`canonical_json`."""
    unique = {canonical_json(obj): obj for obj in objects}
    ordered = sorted(unique.items(), key=lambda item: (str(item[1].get("id", "")), item[0]))
    digest = sha256_bytes(b"[" + b",".join(data for data, _ in ordered) + b"]")
    return {
        "type": "bundle",
        "id": f"bundle--{uuid.uuid5(_NAMESPACE, digest)}",
        "objects": [obj for _, obj in ordered],
    }
