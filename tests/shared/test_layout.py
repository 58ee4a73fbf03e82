"""The spool layout and names of shared/layout.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from shared import layout, timestamps
from shared.errors import UnsafeNameError

FEED = "0b2d4e5f-1111-4222-8333-444455556666"
REPORT = "report--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b"


def _name(sha: str = "a" * 64, subject: str = REPORT) -> layout.SpoolName:
    return layout.SpoolName(datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC), subject, sha)


def test_name_round_trip_and_layout() -> None:
    name = _name()
    assert name.filename == f"20240501T100000123456Z_{REPORT}_{'a' * 64}.json"
    assert layout.SpoolName.parse(name.filename) == name
    rel = layout.relative_path(FEED, name)
    assert rel == PurePosixPath(FEED, "2024", "05", "01", name.filename)
    assert layout.parse_relative_path(rel) == (FEED, name)


def test_names_sort_in_modified_order() -> None:
    early = layout.SpoolName(datetime(2024, 1, 2, tzinfo=UTC), REPORT, "b" * 64)
    late = layout.SpoolName(datetime(2024, 1, 10, tzinfo=UTC), "objects", "a" * 64)
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
        layout.check_feed_id(value)


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
        layout.check_stix_id(value)


def test_custom_stix_types_accepted() -> None:
    for t in ("cryptocurrency-wallet", "x-custom-thing", "extension-definition"):
        stix_id = f"{t}--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b"
        assert layout.check_stix_id(stix_id) == stix_id


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
        layout.parse_relative_path(rel)


def test_timestamps() -> None:
    assert timestamps.parse_stix_timestamp("2024-05-01T10:00:00Z") == datetime(
        2024, 5, 1, 10, tzinfo=UTC
    )
    assert timestamps.parse_stix_timestamp("2024-05-01T10:00:00.123456789Z").microsecond == 123456
    with pytest.raises(ValueError, match="not a timestamp"):
        timestamps.parse_stix_timestamp("yesterday")


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
    found = [(e.relative.name, e.is_symlink) for e in layout.walk_bundles(root)]
    assert found == [("a.json", False), ("b.json", False), ("link.json", True)]


def test_walk_skips_an_unlistable_folder_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A folder the uploader may not list (mode 000) aborted the whole walk, so every
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

    monkeypatch.setattr(layout.os, "scandir", scandir)
    found = [e.relative.as_posix() for e in layout.walk_bundles(root)]
    assert found == ["a/a.json", "c/c.json"]
    monkeypatch.setattr(layout.os, "scandir", lambda path: scandir(root / "b"))
    with pytest.raises(PermissionError):
        list(layout.walk_bundles(root))


def test_path_in_refuses_escape(tmp_path: Path) -> None:
    s = layout.Spool(tmp_path)
    assert s.path_in(layout.DONE, "a/b.json") == tmp_path / "done" / "a" / "b.json"
    for bad in ("../x.json", "/etc/passwd", "a/../../x.json"):
        with pytest.raises(UnsafeNameError):
            s.path_in(layout.DONE, bad)
