"""uploader.importing.scan.scan_bundle: check_bundle's verdicts, one object at a time."""

from __future__ import annotations

import json
import random
import tracemalloc
from typing import Any

import pytest

import uploader.importing.scan as scan_module
from uploader.errors import BundleRejected
from uploader.importing.scan import BundleScan, check_bundle, scan_bundle


def _verdict(data: bytes, *, streaming: bool) -> tuple[Any, ...]:
    try:
        if streaming:
            return ("ok", scan_bundle(data, streaming_from=0))
        bundle = check_bundle(data)
        return ("ok", BundleScan(len(bundle["objects"]), [o["id"] for o in bundle["objects"]]))
    except BundleRejected as exc:
        return ("refused", exc.kind, str(exc))


def _good(n: int = 20) -> str:
    rng = random.Random(n)
    objects = [
        {
            "type": "indicator",
            "id": f"indicator--{i}",
            "pattern": "x" * rng.randint(0, 40),
            "n": i / 3,
        }
        for i in range(n)
    ]
    return json.dumps({"type": "bundle", "id": "bundle--1", "objects": objects})


HOSTILE = [
    b'{"type":"bundle","objects":[]}',
    b'{"type":"bundle"}',
    b'{"objects":[{"type":"a","id":"b"}]}',
    b'{"type":"bundle","objects":null}',
    b'{"type":"bundle","objects":{}}',
    b'{"type":"bundle","objects":[1]}',
    b'{"type":"bundle","objects":[{"type":1,"id":"x"}]}',
    b"[1,2]",
    b"[1,2",
    b"\xef\xbb\xbf{}",
    b'{"type":"bundle","type":"x","objects":[{"type":"a","id":"b"}]}',
    b'{"type":"bundle","objects":[{"type":"a","id":"b"}],"objects":[]}',
    b'{"type":"bundle","objects":[{"type":"a","id":"b"}]} trailing',
    b'{"type":"bundle","objects":[{"type":"a","id":"b"}],"n":12}',
    b'{"type":"bundle","objects":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
    b'{"type":"bundle","objects":[{"type":"a","id":"b"}]}\xff',
    b'{"type":"bundle","objects":[{"type":"a","id":"\xc3"}]}',
    b'  {"type" : "bundle" , "objects" : [ {"type":"a","id":"b"} , {"type":"a","id":"c"} ] }\n',
    b"",
    b"{",
]


def _mutants(count: int) -> list[bytes]:
    rng = random.Random(7)
    good = _good()
    out = []
    for _ in range(count):
        text = list(good)
        i = rng.randrange(len(text))
        roll = rng.random()
        if roll < 0.3:
            del text[i]
        elif roll < 0.6:
            text.insert(i, rng.choice('{}[],:"\\ \n0aé'))
        elif roll < 0.8:
            text[i] = rng.choice('{}[],:"0a')
        else:
            text = text[:i]
        out.append("".join(text).encode())
    return out


def _verdict_cases() -> list[bytes]:
    """Valid bundles (compact and indented), the hostile files and 600 mutants of a good one."""
    return [
        _good().encode(),
        json.dumps(json.loads(_good()), indent=2).encode(),
        *HOSTILE,
        *_mutants(600),
    ]


@pytest.mark.parametrize("slice_size", [1, 7, 4096])
def test_streaming_scan_gives_check_bundles_verdict(
    monkeypatch: pytest.MonkeyPatch, slice_size: int
) -> None:
    # Any refusal, kind and message, must be check_bundle's: the streaming reader hands every
    # doubt to it. Tiny slices put every value across a slice boundary at least once.
    monkeypatch.setattr(scan_module, "_SLICE", slice_size)
    for data in _verdict_cases():
        assert _verdict(data, streaming=True) == _verdict(data, streaming=False), data[:120]


@pytest.mark.parametrize("indent", [None, 2])
def test_streaming_scan_reads_valid_bundles_without_the_full_parse(
    monkeypatch: pytest.MonkeyPatch, indent: int | None
) -> None:
    def no_full_parse(data: bytes) -> dict[str, Any]:
        raise AssertionError("the streaming scan fell back to check_bundle")

    data = json.dumps(json.loads(_good(50)), indent=indent).encode()
    monkeypatch.setattr(scan_module, "_SLICE", 64)
    monkeypatch.setattr(scan_module, "check_bundle", no_full_parse)

    scan = scan_bundle(data, streaming_from=0)

    assert scan.objects == 50 and scan.ids[0] == "indicator--0"


def test_streaming_scan_of_a_big_file_holds_about_a_slice() -> None:
    objects = [
        {"type": "indicator", "id": f"indicator--{i}", "pattern": "[x:y = '" + "z" * 4000 + "']"}
        for i in range(2000)
    ]
    data = json.dumps({"type": "bundle", "id": "bundle--big", "objects": objects}).encode()
    del objects
    assert len(data) > 8_000_000

    tracemalloc.start()
    try:
        scan = scan_bundle(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert scan.objects == 2000 and scan.ids[-1] == "indicator--1999"
    # A full parse holds the text and every object (several times the file); the scan holds a
    # slice of text, one object and the ids.
    assert peak < 4 * scan_module._SLICE, peak


def _layout_cases() -> list[bytes]:
    # Non-ASCII text (two- and four-byte UTF-8), escapes, a non-ASCII custom type and id, pretty
    # printing, and objects after other top-level keys: every span must be the object's own bytes.
    objects = [
        {"type": "identity", "id": "identity--1", "name": "Société Générale 🛰", "x": [1, {"y": 2}]},
        {"type": "x-café", "id": "x-café--2", "note": 'tab\there \\ "quoted" \u20ac'},
        {"type": "indicator", "id": "indicator--3", "pattern": "[a:b = 'é']", "n": 1.5e3},
    ]
    bundle = {"type": "bundle", "id": "bundle--é1", "spec": {"a": [1, 2]}, "objects": objects}
    return [
        json.dumps(bundle, ensure_ascii=False).encode(),
        json.dumps(bundle, ensure_ascii=True).encode(),
        json.dumps(bundle, ensure_ascii=False, indent=4).encode(),
        (
            '{"objects" :\n [ {"id":"\\u0069dentity--\\u20ac","type":"identity"} ,\n'
            '{"type":"report","id":"report--é"}\t]\n,"type":"bundle"}'
        ).encode(),
    ]


@pytest.mark.parametrize("slice_size", [1, 5, 4096])
def test_bundle_layout_finds_each_objects_own_bytes(
    monkeypatch: pytest.MonkeyPatch, slice_size: int
) -> None:
    monkeypatch.setattr(scan_module, "_SLICE", slice_size)
    for data in _layout_cases():
        expected = json.loads(data)
        layout = scan_module.bundle_layout(data)

        assert layout is not None
        assert layout.bundle_id == expected.get("id")
        assert [json.loads(data[start:end]) for start, end, _, _ in layout.spans] == expected[
            "objects"
        ]
        assert [(kind, ident) for _, _, kind, ident in layout.spans] == [
            (o["type"], o["id"]) for o in expected["objects"]
        ]


def test_bundle_layout_leaves_a_doubtful_file_to_the_parser() -> None:
    # Two "objects" keys: json.loads keeps the last one, the streaming reader does not guess.
    data = b'{"type":"bundle","objects":[{"type":"a","id":"a--1"}],"objects":[{"type":"b","id":"b--2"}]}'
    assert check_bundle(data)["objects"] == [{"type": "b", "id": "b--2"}]
    assert scan_module.bundle_layout(data) is None


@pytest.mark.parametrize("slice_size", [1, 7, 4096])
def test_bundle_layout_is_found_only_for_files_check_bundle_accepts(
    monkeypatch: pytest.MonkeyPatch, slice_size: int
) -> None:
    # read_bundle checks a too-big file in the layout pass alone: a layout must never be found
    # for a file that check_bundle refuses (not UTF-8 included), and must list its objects.
    monkeypatch.setattr(scan_module, "_SLICE", slice_size)
    for data in [*_verdict_cases(), *_layout_cases()]:
        verdict = _verdict(data, streaming=False)
        layout = scan_module.bundle_layout(data)
        if verdict[0] == "refused":
            assert layout is None, data[:120]
        elif layout is not None:
            assert [ident for _, _, _, ident in layout.spans] == verdict[1].ids, data[:120]
