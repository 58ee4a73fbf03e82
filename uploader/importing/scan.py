"""A bundle's content checked: parsed whole (:func:`check_bundle`), or read an object at a time
(:func:`scan_bundle`, :func:`bundle_layout`) so that a big file is never held as dicts; both
refuse the same things with the same :class:`~uploader.errors.BundleRejected` kinds."""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any

from uploader.errors import BundleRejected


def check_bundle(data: bytes) -> dict[str, Any]:
    """The parsed bundle if ``data`` is a usable STIX bundle, else :class:`BundleRejected`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleRejected("not-json", f"not UTF-8 at byte {exc.start}") from None
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleRejected("not-json", f"not JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        # Deeply nested arrays/objects exhaust the parser's stack: the content is at fault, and
        # left to the retry loop the file would never leave incoming/.
        raise BundleRejected("not-json", "JSON nested too deeply to parse") from None
    if not isinstance(bundle, dict) or bundle.get("type") != "bundle":
        raise BundleRejected("not-a-bundle", "top level is not an object with type 'bundle'")
    objects = bundle.get("objects")
    if objects is None or objects == []:
        raise BundleRejected("empty", "the bundle has no objects")
    if not isinstance(objects, list):
        raise BundleRejected("invalid-bundle", "'objects' is not a list")
    for index, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise BundleRejected("invalid-bundle", f"objects[{index}] is not an object")
        if not isinstance(obj.get("type"), str) or not isinstance(obj.get("id"), str):
            raise BundleRejected("invalid-bundle", f"objects[{index}] has no string type and id")
    return bundle


@dataclass(frozen=True)
class BundleScan:
    """What a usable bundle holds, for the importer: how many objects and their ids, in order."""

    objects: int
    ids: list[str]


#: Files at least this big are checked by :func:`scan_bundle` one object at a time.
SCAN_STREAMING_BYTES = 1 << 20
_SLICE = 1 << 20
_WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()


def scan_bundle(data: bytes, *, streaming_from: int = SCAN_STREAMING_BYTES) -> BundleScan:
    """:func:`check_bundle`'s checks, without holding the parsed bundle (big bundle).

    Refuses exactly what :func:`check_bundle` refuses, with the same kinds and messages: a file
    smaller than ``streaming_from`` is simply parsed; a bigger one is decoded and parsed a slice
    and an object at a time, and the moment anything is unusual (a syntax error, a duplicate
    ``type`` or ``objects`` key, a refusal) the whole file is handed to :func:`check_bundle`, which
    then says precisely why. A 40 MB file is thus checked in about a megabyte of text instead of
    its whole text and every object as dicts.
    """
    if len(data) < streaming_from:
        return _scan_of(check_bundle(data))
    try:
        return _StreamingScan(data).run()
    except _UnsureError:
        return _scan_of(check_bundle(data))


def _scan_of(bundle: dict[str, Any]) -> BundleScan:
    objects = bundle["objects"]
    return BundleScan(len(objects), [obj["id"] for obj in objects])


class _UnsureError(Exception):
    """The streaming scan met something it leaves to :func:`check_bundle` to describe."""


@dataclass(frozen=True)
class BundleLayout:
    """Where each object of a bundle file is, to cut the file without parsing it whole."""

    #: The bundle's own ``id`` (None if it has none, or it is not text).
    bundle_id: str | None
    #: ``(start, end, type, id)`` of each object, in file order: ``data[start:end]`` is its JSON.
    spans: list[tuple[int, int, str, str]]


def bundle_layout(data: bytes) -> BundleLayout | None:
    """The byte offsets of every object of a usable bundle, in the pass that checks it.

    :func:`scan_bundle`'s streaming reader, over the text decoded as Latin-1: one character per
    byte, so a position in the text is an offset in the file, and the JSON structure (all ASCII)
    reads the same as in UTF-8 (the bytes are checked to be UTF-8 alongside). A ``type`` or ``id``
    that is not ASCII is read again from its bytes as UTF-8. None whenever the streaming reader
    would hand the file to :func:`check_bundle` (a refusal, a duplicate ``type`` or ``objects``
    key, bytes that are not UTF-8): the caller then asks :func:`scan_bundle` why, or parses it.
    """
    scan = _StreamingScan(data, layout=True)
    try:
        scan.run()
    except _UnsureError:
        return None
    assert scan.spans is not None
    return BundleLayout(scan.bundle_id, scan.spans)


class _StreamingScan:
    """A strict reader of ``{"type": "bundle", "objects": [{...}, ...], ...}`` over slices of text.

    With ``layout=True`` it also records where each object is (:func:`bundle_layout`).
    """

    def __init__(self, data: bytes, *, layout: bool = False) -> None:
        self._data = memoryview(data)
        self._next = 0
        self._decoder = codecs.getincrementaldecoder("latin-1" if layout else "utf-8")("strict")
        # Latin-1 reads any bytes: in layout mode the file is also checked to be UTF-8, so a layout
        # is found exactly for the files scan_bundle accepts without the full parser.
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict") if layout else None
        self._ended = False
        self.buf = ""
        self.pos = 0
        self.spans: list[tuple[int, int, str, str]] | None = [] if layout else None
        self.bundle_id: str | None = None

    def _offset(self) -> int:
        """The cursor as an offset in the file (Latin-1 only: one character per byte)."""
        return self._next - len(self.buf) + self.pos

    def _more(self) -> bool:
        """Append the next slice of text (at least as much as is unread: big values double)."""
        if self._ended:
            return False
        size = max(_SLICE, len(self.buf) - self.pos)
        chunk = self._data[self._next : self._next + size]
        self._next += len(chunk)
        final = self._next >= len(self._data)
        try:
            text = self._decoder.decode(chunk, final=final)
            if self._utf8 is not None:
                self._utf8.decode(chunk, final=final)
        except UnicodeDecodeError:
            raise _UnsureError from None
        self._ended = final
        self.buf = self.buf[self.pos :] + text
        self.pos = 0
        return True

    def _peek(self) -> str | None:
        """The next character that is not whitespace (None at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return None

    def _expect(self, chars: str) -> str:
        char = self._peek()
        if char is None or char not in chars:
            raise _UnsureError
        self.pos += 1
        return char

    def _value(self) -> Any:
        """The JSON value at the cursor, read again with more text while it may be cut off."""
        if self._peek() is None:  # raw_decode does not skip whitespace itself
            raise _UnsureError
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except (json.JSONDecodeError, RecursionError):
                if self._more():
                    continue
                raise _UnsureError from None
            # A value ending exactly at the end of the text read so far may be a cut number.
            if end < len(self.buf) or not self._more():
                self.pos = end
                return value

    def run(self) -> BundleScan:
        self._expect("{")
        seen: set[str] = set()
        bundle_type: Any = None
        ids: list[str] = []
        if self._peek() == "}":
            raise _UnsureError
        while True:
            if self._peek() != '"':
                raise _UnsureError
            key = self._value()
            if key in seen and key in ("type", "objects"):
                raise _UnsureError
            seen.add(key)
            self._expect(":")
            if key == "objects" and self._peek() == "[":
                self.pos += 1
                if self._peek() == "]":
                    self.pos += 1
                else:
                    while True:
                        start = self._start()
                        obj = self._value()
                        if not (
                            isinstance(obj, dict)
                            and isinstance(obj.get("type"), str)
                            and isinstance(obj.get("id"), str)
                        ):
                            raise _UnsureError
                        ids.append(obj["id"])
                        if self.spans is not None:
                            self._record(start, obj["type"], obj["id"])
                        del obj
                        if self._expect(",]") == "]":
                            break
            elif key == "objects":
                raise _UnsureError  # null or not a list: check_bundle says which refusal
            else:
                start = self._start()
                value = self._value()
                if key == "type":
                    bundle_type = value
                elif key == "id" and self.spans is not None:
                    self.bundle_id = self._text(value, start) if isinstance(value, str) else None
            if self._expect(",}") == "}":
                break
        if self._peek() is not None or bundle_type != "bundle" or not ids:
            raise _UnsureError
        return BundleScan(len(ids), ids)

    def _start(self) -> int:
        """Where the next value begins in the file, when recording a layout (else 0)."""
        if self.spans is None:
            return 0
        self._peek()
        return self._offset()

    def _record(self, start: int, obj_type: str, obj_id: str) -> None:
        assert self.spans is not None
        end = self._offset()
        if not (obj_type.isascii() and obj_id.isascii()):
            obj = self._as_utf8(start)
            obj_type, obj_id = obj["type"], obj["id"]
        self.spans.append((start, end, obj_type, obj_id))

    def _text(self, value: str, start: int) -> str:
        """A string value read in Latin-1 mode, as it reads in UTF-8 (it ends at the cursor)."""
        if value.isascii():  # ASCII reads the same either way
            return value
        text: str = self._as_utf8(start)
        return text

    def _as_utf8(self, start: int) -> Any:
        """The value from ``start`` to the cursor, read again from its bytes as UTF-8 JSON."""
        return json.loads(bytes(self._data[start : self._offset()]).decode("utf-8"))
