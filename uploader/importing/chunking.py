"""One spool file's bundle, checked once and cut into the pushes that carry it to OpenCTI.

:func:`read_bundle` is the one parse of a file's bytes: it refuses what is not a usable STIX
bundle (:class:`uploader.errors.BundleRejected`, the same kinds and messages as
:func:`uploader.importing.scan.check_bundle`) and keeps what the split needs, so the importer never reads
the file again. A bundle that fits in one push is sent as the file's exact bytes; a bigger one is
cut into whole objects (referenced objects first, containers last), each chunk a
``{type, id, objects}`` bundle of the objects' own bytes from the file. The cut is planned from
where each object is in the file (:func:`uploader.importing.scan.bundle_layout`) and each chunk is built
when it is sent, so a split file costs its bytes and one chunk in memory, not its parsed objects
and every chunk.

Nothing here knows pycti: which objects OpenCTI imports is a predicate the caller passes (the
importer gives pycti's own).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, overload

from uploader.errors import PermanentImportError
from uploader.importing.scan import BundleLayout, bundle_layout, check_bundle, scan_bundle

#: Bytes kept free in every push for the GraphQL document and variables around the bundle.
PUSH_ENVELOPE_BYTES = 4096

# Objects that others refer to go first, containers last, so that a split bundle's early pushes
# carry what the later ones reference (the platform's workers retry missing refs, but less is better).
_TYPE_RANK = {
    "marking-definition": 0,
    "extension-definition": 0,
    "language-content": 0,
    "identity": 1,
    "relationship": 3,
    "sighting": 3,
    "report": 4,
    "grouping": 4,
    "note": 4,
    "opinion": 4,
    "observed-data": 4,
}

Importable = Callable[[str], bool]


@dataclass(frozen=True)
class Bundle:
    """A usable bundle file: its bytes, how many objects, and what the split needs."""

    data: bytes
    max_push_bytes: int
    #: The objects' ids in file order (a bundle that fits in one push).
    ids: Sequence[str]
    #: Where each object is (a bundle over ``max_push_bytes``, cut into several pushes).
    layout: BundleLayout | None = None

    @property
    def objects(self) -> int:
        return len(self.layout.spans) if self.layout is not None else len(self.ids)

    def pushes(self, importable: Importable) -> Sequence[bytes]:
        """The bundle texts (UTF-8) to push, each under ``max_push_bytes`` once in a push.

        A chunk holding only objects ``importable`` refuses is not sent (pycti refuses such a
        push with "Nothing to import", and drops those objects from any push anyway), so no text
        at all means the file has nothing OpenCTI imports. One object alone over the limit is a
        :class:`PermanentImportError`: nothing is ever dropped.
        """
        if self.layout is None:
            return [self.data] if any(importable(ident) for ident in self.ids) else []
        return _split(self.data, self.layout, self.max_push_bytes, importable)


def read_bundle(data: bytes, max_push_bytes: int, parsed: dict[str, Any] | None = None) -> Bundle:
    """Check ``data`` once and keep what cutting it into pushes needs.

    A file that fits in a push is checked by :func:`uploader.importing.scan.scan_bundle` (one object at a
    time for big files: the parsed bundle is never held), or taken from ``parsed`` when the caller
    parsed it already (:func:`uploader.importing.scan.check_bundle`'s result, in strict mode); a bigger one by
    :func:`uploader.importing.scan.bundle_layout`, which checks and records where each object is in the same
    pass. Raises :class:`uploader.errors.BundleRejected`.
    """
    if pushed_size_of(data) <= max_push_bytes - PUSH_ENVELOPE_BYTES:
        if parsed is not None:
            return Bundle(data, max_push_bytes, [obj["id"] for obj in parsed["objects"]])
        return Bundle(data, max_push_bytes, scan_bundle(data).ids)
    layout = bundle_layout(data)
    if layout is None:
        # Refused (check_bundle says why), or a file the streaming reader leaves to the parser
        # (a repeated "objects" key, say): what json.loads reads is what the platform reads.
        data, layout = _reserialised(data)
    return Bundle(data, max_push_bytes, (), layout)


def _split(
    data: bytes, layout: BundleLayout, max_push_bytes: int, importable: Importable
) -> Sequence[bytes]:
    if not any(importable(ident) for _, _, _, ident in layout.spans):
        return []
    budget = max_push_bytes - PUSH_ENVELOPE_BYTES
    bundle_id = layout.bundle_id or f"bundle--{uuid.uuid4()}"
    head = _pushed_size(json.dumps({"type": "bundle", "id": bundle_id, "objects": []}))
    groups: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    size = head
    current_importable = False
    for start, end, _kind, ident in sorted(layout.spans, key=lambda span: _rank_of(span[2])):
        obj_size = pushed_size_of(data[start:end]) + 1
        if head + obj_size > budget:
            raise PermanentImportError(
                f"object {ident} alone is {obj_size} bytes, over UPLOADER_MAX_PUSH_BYTES={max_push_bytes}"
            )
        if current and size + obj_size > budget:
            if current_importable:
                groups.append(current)
            current, size, current_importable = [], head, False
        current.append((start, end))
        size += obj_size
        current_importable = current_importable or importable(ident)
    if current and current_importable:
        groups.append(current)
    return _Chunks(data, bundle_id, groups)


class _Chunks(Sequence[bytes]):
    """The chunks of a split file, each built from the file's bytes when it is asked for."""

    def __init__(self, data: bytes, bundle_id: str, groups: list[list[tuple[int, int]]]) -> None:
        self._data = data
        self._bundle_id = bundle_id
        self._groups = groups

    def __len__(self) -> int:
        return len(self._groups)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        group = self._groups[index]
        index = index % len(self._groups)
        view = memoryview(self._data)  # the objects are joined straight from the file's bytes
        return _chunk_bytes(self._bundle_id, index, [view[start:end] for start, end in group])


def _chunk_bytes(bundle_id: str, index: int, objects: Sequence[bytes | memoryview]) -> bytes:
    chunk_id = f"bundle--{uuid.uuid5(uuid.NAMESPACE_URL, f'{bundle_id}/{index}')}"
    pieces: list[bytes | memoryview] = [
        b'{"type":"bundle","id":"',
        chunk_id.encode(),
        b'","objects":[',
    ]
    for number, obj in enumerate(objects):
        if number:
            pieces.append(b",")
        pieces.append(obj)
    pieces.append(b"]}")
    return b"".join(pieces)


def _reserialised(data: bytes) -> tuple[bytes, BundleLayout]:
    """The objects of a bundle parsed whole, laid end to end as compact JSON, and their layout."""
    parsed = check_bundle(data)
    pieces: list[bytes] = []
    spans: list[tuple[int, int, str, str]] = []
    offset = 0
    for obj in parsed["objects"]:
        piece = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        spans.append((offset, offset + len(piece), str(obj["type"]), obj["id"]))
        pieces.append(piece)
        offset += len(piece)
    bundle_id = parsed.get("id")
    return b"".join(pieces), BundleLayout(bundle_id if isinstance(bundle_id, str) else None, spans)


def _rank_of(obj_type: str) -> int:
    return _TYPE_RANK.get(obj_type, 2)


#: Every byte but the control characters (which JSON escapes).
_NOT_CONTROL = bytes(range(32, 256))
#: Control characters JSON escapes with two characters (\b \t \n \f \r); the others take six.
_SHORT_ESCAPES = frozenset(b"\b\t\n\f\r")
_CONTROL_SCAN = 1 << 20


def pushed_size_of(data: bytes) -> int:
    """The size of UTF-8 ``data`` once it travels as a JSON string in a push's variables.

    Quotes and backslashes are escaped, so the body is bigger than the file. Counted without
    building the escaped copy; the control characters are picked out a megabyte at a time
    (``bytes.translate`` allocates an output as big as its input before it shrinks it).
    """
    extra = data.count(b'"') + data.count(b"\\")
    for start in range(0, len(data), _CONTROL_SCAN):
        for byte in data[start : start + _CONTROL_SCAN].translate(None, _NOT_CONTROL):
            extra += 1 if byte in _SHORT_ESCAPES else 5
    return len(data) + 2 + extra


def _pushed_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))
