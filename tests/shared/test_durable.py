"""The durable file operations of shared/durable.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared import durable
from shared.errors import DestinationExistsError, SpoolError

FEED = "0b2d4e5f-1111-4222-8333-444455556666"


def test_publish_is_atomic_and_idempotent(tmp_path: Path) -> None:
    data = b'{"type":"bundle"}'
    target = tmp_path / "incoming" / FEED / "2024" / "05" / "01" / "f.json"
    assert durable.publish_bytes(target, data) is True
    assert target.read_bytes() == data
    assert durable.publish_bytes(target, data) is False
    leftovers = [p.name for p in target.parent.iterdir() if p.name != "f.json"]
    assert leftovers == []


def test_publish_failure_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "incoming"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(SpoolError):
        durable.publish_bytes(blocker / "x" / "f.json", b"{}")
    assert list(tmp_path.iterdir()) == [blocker]


def test_move_never_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "a" / "f.json"
    src.parent.mkdir()
    src.write_bytes(b"one")
    dst = tmp_path / "b" / "c" / "f.json"
    durable.move_no_replace(src, dst)
    assert dst.read_bytes() == b"one"
    assert not src.exists()
    src.write_bytes(b"two")
    with pytest.raises(DestinationExistsError):
        durable.move_no_replace(src, dst)
    assert dst.read_bytes() == b"one"
    assert src.read_bytes() == b"two"


def test_sha256_file_refuses_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_bytes(b"abc")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert durable.sha256_file(real) == durable.sha256_bytes(b"abc")
    with pytest.raises(OSError):
        durable.sha256_file(link)
    assert os.path.exists(link)


def test_remove_stale_temps_touches_only_old_own_temp_names(tmp_path: Path) -> None:
    day = tmp_path / "incoming" / FEED / "2024" / "05" / "01"
    day.mkdir(parents=True)
    old = day / durable.temp_name("a.json")
    new = day / durable.temp_name("b.json")
    rsync = day / ".c.json.Ab3dE9"
    bundle = day / "d.json"
    for path in (old, new, rsync, bundle):
        path.write_text("{}")
    for path in (old, rsync, bundle):
        os.utime(path, (0, 0))

    assert durable.remove_stale_temps(tmp_path / "incoming", older_than=60) == 1

    assert not old.exists()
    assert new.exists() and rsync.exists() and bundle.exists()


def test_pieces_are_published_in_place_once(tmp_path: Path) -> None:
    # The fetcher publishes a report file as the pieces it built, never joined.
    target = tmp_path / "incoming" / FEED / "2024" / "05" / "01" / "f.json"
    pieces = [b'{"objects":[', b"1", b",", b"2" * (3 << 20), b"]}"]
    assert durable.publish_bytes(target, pieces) is True
    assert target.read_bytes() == b"".join(pieces)
    # Content-addressed: already there, so nothing is written (not even a temp file).
    before = target.stat().st_mtime_ns
    assert durable.publish_bytes(target, [b"".join(pieces)]) is False
    assert target.stat().st_mtime_ns == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


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
    real = durable.fsync_dir
    monkeypatch.setattr(durable, "fsync_dir", lambda path: calls.append(path.name) or real(path))

    durable.move_no_replace(src, tmp_path / "b" / "f.json", sync_source=sync_source)

    assert set(calls) == synced
