"""STIX bundle assembly: the bytes of one spool file, always the same for the same objects.

Objects are serialised canonically (:func:`fetcher.stix.canonical_json`) and put in a deterministic order, and
the bundle id is a uuid5 over them, so unchanged content gives an unchanged file name and the
spool's content addressing skips it. Only the fetcher builds bundles; the uploader reads them.
"""

from __future__ import annotations

import hashlib
import uuid

# Namespace of the deterministic bundle ids (uuid5 over the canonical objects).
BUNDLE_NAMESPACE = uuid.UUID("6b1e3c1a-2f4d-5e8b-9a7c-0d1e2f3a4b5c")


class BundleBuilder:
    """A STIX 2.1 bundle's bytes from objects given as their canonical JSON, as the mirror keeps
    them (:attr:`fetcher.state.mirror.Kept.data`): no object is parsed or serialised again.

    Objects are sorted by id and then by their bytes, exact duplicates dropped, and the bundle id
    is a uuid5 over the sorted objects, so the same objects always give the same bytes. A report
    bundle of 40 MB is then never held as dicts, nor as one more copy of itself: the bytes are
    handed on in pieces (:meth:`chunks`).
    """

    def __init__(self) -> None:
        self._keys: dict[bytes, str] = {}

    def add_canonical(self, data: bytes, object_id: str) -> None:
        """Add an object given as its :func:`fetcher.stix.canonical_json` bytes."""
        self._keys.setdefault(data, object_id)

    def chunks(self) -> list[bytes]:
        """The bundle's canonical JSON in pieces, to be written in order; empties the builder."""
        keys, self._keys = self._keys, {}
        ordered = sorted(keys, key=lambda k: (keys[k], k))
        keys.clear()
        digest = hashlib.sha256(b"[")
        pieces: list[bytes] = [b""]
        for index, data in enumerate(ordered):
            if index:
                digest.update(b",")
                pieces.append(b",")
            digest.update(data)
            pieces.append(data)
        digest.update(b"]")
        bundle_id = f"bundle--{uuid.uuid5(BUNDLE_NAMESPACE, digest.hexdigest())}"
        pieces[0] = b'{"id":"' + bundle_id.encode("ascii") + b'","objects":['
        pieces.append(b'],"type":"bundle"}')
        return pieces
