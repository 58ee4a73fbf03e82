"""``ctx-uploader prune``: retention of done/ only, and the fetcher's dedup after it."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.layout import Spool, walk_bundles
from tests.airgap.conftest import fetcher, uploader
from tests.airgap.test_transfer import touch_everything
from tests.standins.ctx import CTXStandIn
from tests.uploader.conftest import FEED_A, FEED_B, FakeImporter, SpoolFiles
from uploader.spool_ops.prune import parse_duration

DAY = 86400.0


def names(root: Path) -> list[str]:
    return [entry.relative.as_posix() for entry in walk_bundles(root)]


def receipt(path: Path, imported_days_ago: float | None) -> Path:
    """Write the receipt of a done/ file imported that many days ago (None: no receipt)."""
    side = path.with_name(path.name + ".receipt")
    if imported_days_ago is not None:
        when = datetime.now(UTC) - timedelta(days=imported_days_ago)
        side.write_text(
            json.dumps({"imported_at": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "work_id": "w"})
        )
    return side


def age(path: Path, days: float) -> None:
    old = time.time() - days * DAY
    os.utime(path, (old, old))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("45s", 45, id="seconds"),
        pytest.param("90m", 5400, id="minutes"),
        pytest.param("12h", 43200, id="hours"),
        pytest.param("30d", 30 * DAY, id="days"),
        pytest.param("0s", 0, id="zero"),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("30", id="no-unit"),
        pytest.param("1w", id="weeks"),
        pytest.param("-5d", id="negative"),
        pytest.param("1.5h", id="fraction"),
        pytest.param("d", id="no-number"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_duration_is_a_clear_error(
    spool: Spool, uploader_env: dict[str, str], text: str
) -> None:
    result = uploader(["prune", "--older-than", text], uploader_env)

    assert result.exit_code == 2
    assert "is not a duration: use a whole number and s, m, h or d" in result.output


@pytest.fixture
def aged_spool(spool: Spool, files: SpoolFiles) -> dict[str, Path]:
    """done/ files of several ages, and old files in every other state."""
    paths = {
        "done-old": files.add(FEED_A, minutes=1, state="done"),
        "done-old-no-receipt": files.add(FEED_A, minutes=2, state="done"),
        "done-new": files.add(FEED_A, minutes=3, state="done"),
        "done-old-other-day": files.add(FEED_B, minutes=3 * 1440, state="done"),
        "done-new-old-mtime": files.add(FEED_B, minutes=4, state="done"),
        "incoming-old": files.add(FEED_A, minutes=5),
        "failed-old": files.add(FEED_A, minutes=6, state="failed"),
    }
    receipt(paths["done-old"], 40)
    receipt(paths["done-new"], 1)
    receipt(paths["done-old-other-day"], 31)
    # The receipt's time wins over an old mtime (a file restored from a backup, say).
    receipt(paths["done-new-old-mtime"], 2)
    claimed = spool.processing / "someone" / paths["incoming-old"].relative_to(spool.incoming)
    claimed.parent.mkdir(parents=True)
    claimed.write_bytes(paths["incoming-old"].read_bytes())
    paths["processing-old"] = claimed
    failed = paths["failed-old"]
    failed.with_name(failed.name + ".reason").write_text("{}")
    for path in paths.values():
        age(path, 100)
    return paths


def test_prune_dry_run_removes_nothing(
    spool: Spool, aged_spool: dict[str, Path], uploader_env: dict[str, str]
) -> None:
    before = {state: names(spool.state_dir(state)) for state in ("incoming", "done", "failed")}

    result = uploader(["prune", "--older-than", "30d", "--dry-run"], uploader_env)

    assert result.exit_code == 0, result.output
    assert result.stdout.count("would remove done/") == 3
    assert "3 file(s)" in result.output and "would be removed" in result.output
    assert {s: names(spool.state_dir(s)) for s in before} == before


def test_prune_removes_only_old_done_files_and_empty_date_folders(
    spool: Spool, aged_spool: dict[str, Path], uploader_env: dict[str, str]
) -> None:
    gone = ["done-old", "done-old-no-receipt", "done-old-other-day"]
    kept = [k for k in aged_spool if k not in gone]
    sizes = sum(
        aged_spool[k].stat().st_size + receipt(aged_spool[k], None).stat().st_size
        if receipt(aged_spool[k], None).exists()
        else aged_spool[k].stat().st_size
        for k in gone
    )

    result = uploader(["prune", "--older-than", "30d"], uploader_env)

    assert result.exit_code == 0, result.output
    for key in gone:
        assert not aged_spool[key].exists()
        assert not receipt(aged_spool[key], None).exists()
        assert f"removed done/{aged_spool[key].relative_to(spool.done)}" in result.stdout
    for key in kept:
        assert aged_spool[key].exists(), key
    assert receipt(aged_spool["done-new"], None).exists()
    assert f"3 file(s), {sizes} bytes removed" in result.stdout
    # FEED_B's day folder of the old file is gone; its month folder holds another day.
    assert not aged_spool["done-old-other-day"].parent.exists()
    assert aged_spool["done-old-other-day"].parent.parent.is_dir()
    assert aged_spool["done-new"].parent.is_dir()
    assert (spool.failed / aged_spool["failed-old"].relative_to(spool.failed)).exists()
    assert aged_spool["failed-old"].with_name(aged_spool["failed-old"].name + ".reason").exists()


def test_fetcher_writes_nothing_again_after_done_is_pruned(
    fetch_env: dict[str, str], ctx: CTXStandIn, uploader_env: dict[str, str]
) -> None:
    env = {**uploader_env, "SPOOL_DIR": fetch_env["SPOOL_DIR"]}
    spool = Spool(Path(fetch_env["SPOOL_DIR"]))
    assert fetcher(["once"], fetch_env).exit_code == 0
    fetched = len(names(spool.incoming))
    imported = uploader(["once", "--max-wait", "10"], env, FakeImporter())
    assert imported.exit_code == 0, imported.output
    assert len(names(spool.done)) == fetched > 0

    pruned = uploader(["prune", "--older-than", "0s"], env)
    assert pruned.exit_code == 0, pruned.output
    assert names(spool.done) == []
    # Every date folder went with the files; only the feed folders are left, empty.
    assert all(not any(feed.iterdir()) for feed in spool.done.iterdir())
    touch_everything(ctx)
    again = fetcher(["once"], fetch_env)

    assert again.exit_code == 0, again.output
    assert "reports written 0" in again.output
    assert names(spool.incoming) == []
