"""The spool contract of shared/spool.py."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from shared import spool
from shared.errors import DestinationExistsError, SpoolError, UnsafeNameError

FEED = "0b2d4e5f-1111-4222-8333-444455556666"
REPORT = "report--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b"


def _name(sha: str = "a" * 64, subject: str = REPORT) -> spool.SpoolName:
    return spool.SpoolName(datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC), subject, sha)


def test_name_round_trip_and_layout() -> None:
    name = _name()
    assert name.filename == f"20240501T100000123456Z_{REPORT}_{'a' * 64}.json"
    assert spool.SpoolName.parse(name.filename) == name
    rel = spool.relative_path(FEED, name)
    assert rel == PurePosixPath(FEED, "2024", "05", "01", name.filename)
    assert spool.parse_relative_path(rel) == (FEED, name)


def test_names_sort_in_modified_order() -> None:
    early = spool.SpoolName(datetime(2024, 1, 2, tzinfo=UTC), REPORT, "b" * 64)
    late = spool.SpoolName(datetime(2024, 1, 10, tzinfo=UTC), "objects", "a" * 64)
    assert sorted([late.filename, early.filename]) == [early.filename, late.filename]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("../../etc", id="traversal"),
        pytest.param("0b2d4e5f-1111-4222-8333-44445555666", id="short"),
        pytest.param("0b2d4e5f-1111-4222-8333-444455556666/..", id="suffix"),
        pytest.param("", id="empty"),
        pytest.param(None, id="none"),
    ],
)
def test_feed_id_refused(value: object) -> None:
    with pytest.raises(UnsafeNameError):
        spool.check_feed_id(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("report--../../etc/passwd", id="traversal"),
        pytest.param("report", id="no-uuid"),
        pytest.param("Report--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b", id="upper-type"),
        pytest.param("report--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b/x", id="slash"),
        pytest.param("re/port--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b", id="slash-in-type"),
    ],
)
def test_stix_id_refused(value: str) -> None:
    with pytest.raises(UnsafeNameError):
        spool.check_stix_id(value)


def test_custom_stix_types_accepted() -> None:
    for t in ("cryptocurrency-wallet", "x-custom-thing", "extension-definition"):
        stix_id = f"{t}--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b"
        assert spool.check_stix_id(stix_id) == stix_id


@pytest.mark.parametrize(
    "rel",
    [
        pytest.param(f"{FEED}/2024/05/02/{_name().filename}", id="date-mismatch"),
        pytest.param(f"{FEED}/2024/05/{_name().filename}", id="too-shallow"),
        pytest.param(f"../{FEED}/2024/05/01/{_name().filename}", id="dotdot"),
        pytest.param(f"{FEED.upper()}/2024/05/01/{_name().filename}", id="upper-feed"),
        pytest.param(f"{FEED}/2024/05/01/x.json", id="bad-name"),
    ],
)
def test_relative_path_refused(rel: str) -> None:
    with pytest.raises(UnsafeNameError):
        spool.parse_relative_path(rel)


def test_timestamps() -> None:
    assert spool.parse_stix_timestamp("2024-05-01T10:00:00Z") == datetime(
        2024, 5, 1, 10, tzinfo=UTC
    )
    assert spool.parse_stix_timestamp("2024-05-01T10:00:00.123456789Z").microsecond == 123456
    with pytest.raises(ValueError, match="not a timestamp"):
        spool.parse_stix_timestamp("yesterday")


def test_bundle_is_deterministic() -> None:
    a = {"type": "indicator", "id": "indicator--1c2d3e4f-0000-4000-8000-000000000001", "x": 1}
    b = {"type": "malware", "id": "malware--1c2d3e4f-0000-4000-8000-000000000002", "y": [1, 2]}
    one = spool.canonical_json(spool.make_bundle([a, b, a]))
    two = spool.canonical_json(spool.make_bundle([b, a]))
    assert one == two
    bundle = json.loads(one)
    assert bundle["type"] == "bundle"
    assert bundle["id"].startswith("bundle--")
    assert [o["id"] for o in bundle["objects"]] == [a["id"], b["id"]]
    changed = spool.canonical_json(spool.make_bundle([a, {**b, "y": [2, 1]}]))
    assert json.loads(changed)["id"] != bundle["id"]


def test_publish_is_atomic_and_idempotent(tmp_path: Path) -> None:
    data = b'{"type":"bundle"}'
    target = tmp_path / "incoming" / FEED / "2024" / "05" / "01" / "f.json"
    assert spool.publish_bytes(target, data) is True
    assert target.read_bytes() == data
    assert spool.publish_bytes(target, data) is False
    leftovers = [p.name for p in target.parent.iterdir() if p.name != "f.json"]
    assert leftovers == []


def test_publish_failure_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "incoming"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(SpoolError):
        spool.publish_bytes(blocker / "x" / "f.json", b"{}")
    assert list(tmp_path.iterdir()) == [blocker]


def test_move_never_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "a" / "f.json"
    src.parent.mkdir()
    src.write_bytes(b"one")
    dst = tmp_path / "b" / "c" / "f.json"
    spool.move_no_replace(src, dst)
    assert dst.read_bytes() == b"one"
    assert not src.exists()
    src.write_bytes(b"two")
    with pytest.raises(DestinationExistsError):
        spool.move_no_replace(src, dst)
    assert dst.read_bytes() == b"one"
    assert src.read_bytes() == b"two"


def test_walk_skips_hidden_and_reports_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    day = root / FEED / "2024" / "05" / "01"
    day.mkdir(parents=True)
    (day / "b.json").write_text("{}")
    (day / "a.json").write_text("{}")
    (day / ".a.json.123.tmp").write_text("{}")
    (day / ".hidden.json").write_text("{}")
    (day / "notes.txt").write_text("x")
    (day / "a.json.reason").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text("{}")
    (day / "link.json").symlink_to(outside / "secret.json")
    (root / "dirlink").symlink_to(outside)
    found = [(e.relative.name, e.is_symlink) for e in spool.walk_bundles(root)]
    assert found == [("a.json", False), ("b.json", False), ("link.json", True)]


def test_walk_skips_an_unlistable_folder_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 5: a folder the uploader may not list (mode 000) aborted the whole walk, so every
    # file after it stayed unseen. Tests run as root, so the refusal is simulated.
    root = tmp_path / "incoming"
    for feed in ("a", "b", "c"):
        (root / feed).mkdir(parents=True)
        (root / feed / f"{feed}.json").write_text("{}")
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if str(path) == str(root / "b"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(spool.os, "scandir", scandir)
    found = [e.relative.as_posix() for e in spool.walk_bundles(root)]
    assert found == ["a/a.json", "c/c.json"]
    monkeypatch.setattr(spool.os, "scandir", lambda path: scandir(root / "b"))
    with pytest.raises(PermissionError):
        list(spool.walk_bundles(root))


def test_path_in_refuses_escape(tmp_path: Path) -> None:
    s = spool.Spool(tmp_path)
    assert s.path_in(spool.DONE, "a/b.json") == tmp_path / "done" / "a" / "b.json"
    for bad in ("../x.json", "/etc/passwd", "a/../../x.json"):
        with pytest.raises(UnsafeNameError):
            s.path_in(spool.DONE, bad)


def test_sha256_file_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_bytes(b"abc")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert spool.sha256_file(real) == spool.sha256_bytes(b"abc")
    with pytest.raises(OSError):
        spool.sha256_file(link)
    assert os.path.exists(link)


def test_bundle_json_is_canonical_json_of_make_bundle() -> None:
    # The fetcher writes bundle_json(objects) (issue 6, memory): it must stay byte-identical to
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
    assert spool.bundle_json(objects) == spool.canonical_json(spool.make_bundle(objects))
    assert spool.bundle_json(objects[:1]) == spool.canonical_json(spool.make_bundle(objects[:1]))


def test_remove_stale_temps_touches_only_old_own_temp_names(tmp_path: Path) -> None:
    day = tmp_path / "incoming" / FEED / "2024" / "05" / "01"
    day.mkdir(parents=True)
    old = day / spool.temp_name("a.json")
    new = day / spool.temp_name("b.json")
    rsync = day / ".c.json.Ab3dE9"
    bundle = day / "d.json"
    for path in (old, new, rsync, bundle):
        path.write_text("{}")
    for path in (old, rsync, bundle):
        os.utime(path, (0, 0))

    assert spool.remove_stale_temps(tmp_path / "incoming", older_than=60) == 1

    assert not old.exists()
    assert new.exists() and rsync.exists() and bundle.exists()


def test_staged_bytes_are_published_in_place_once(tmp_path: Path) -> None:
    # The fetcher stages report files in its pool threads and publishes them in order (issue 6).
    target = tmp_path / "incoming" / FEED / "2024" / "05" / "01" / "f.json"
    pieces = [b'{"objects":[', b"1", b",", b"2" * (3 << 20), b"]}"]
    staged = spool.stage_bytes(target, pieces)
    assert staged.parent == target.parent and staged.name.startswith(".")
    assert staged.read_bytes() == b"".join(pieces)
    assert not target.exists()  # nothing visible before the publish

    assert spool.publish_staged(staged, target) is True
    assert target.read_bytes() == b"".join(pieces)
    assert not staged.exists()

    again = spool.stage_bytes(target, b"".join(pieces))
    assert spool.publish_staged(again, target) is False  # content-addressed: already there
    assert not again.exists()
    dropped = spool.stage_bytes(target, b"other")
    spool.discard_staged(dropped)
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_bundle_builder_matches_bundle_json_and_each_objects_sha() -> None:
    objects = [
        {"type": "indicator", "id": "indicator--b", "modified": "2024-01-02T00:00:00Z", "n": "é"},
        {"type": "indicator", "id": "indicator--a", "modified": "2024-01-01T00:00:00Z", "q": 1},
        {"type": "indicator", "id": "indicator--a", "modified": "2024-01-01T00:00:00Z", "q": 2},
        {"type": "indicator", "id": "indicator--b", "modified": "2024-01-02T00:00:00Z", "n": "é"},
    ]
    builder = spool.BundleBuilder()
    for obj in objects:
        builder.add(obj)
    assert b"".join(builder.chunks()) == spool.bundle_json(objects)
    # The ledger's entry per id: the SHA-256 of the last object of that id, canonically.
    assert builder.object_shas == {
        "indicator--a": spool.sha256_bytes(spool.canonical_json(objects[2])),
        "indicator--b": spool.sha256_bytes(spool.canonical_json(objects[3])),
    }


@pytest.mark.parametrize(
    ("sync_source", "synced"),
    [
        pytest.param(True, {"a", "b"}, id="default-syncs-both-folders"),
        pytest.param(False, {"b"}, id="claim-folder-not-synced"),
    ],
)
def test_move_syncs_the_source_folder_unless_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_source: bool, synced: set[str]
) -> None:
    src = tmp_path / "a" / "f.json"
    src.parent.mkdir()
    src.write_bytes(b"one")
    (tmp_path / "b").mkdir()
    calls: list[str] = []
    real = spool.fsync_dir
    monkeypatch.setattr(spool, "fsync_dir", lambda path: calls.append(path.name) or real(path))

    spool.move_no_replace(src, tmp_path / "b" / "f.json", sync_source=sync_source)

    assert set(calls) == synced
