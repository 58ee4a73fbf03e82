"""End to end: ``ctx-uploader`` as a real process, the real PyctiImporter, the OpenCTI stand-in."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.layout import Spool, walk_bundles
from tests.standins.opencti import OpenCTIStandIn
from tests.uploader.conftest import FEED_A, FEED_B, FEED_C, UPLOADER, SpoolFiles, wait_until

# The stand-in's fixtures (opencti_standin), loaded the way the other OpenCTI tests load them.
pytest_plugins = ["tests.standins.fixtures"]

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not UPLOADER.exists(), reason="ctx-uploader is not installed")


def bundles(root: Path) -> list[str]:
    return [e.relative.as_posix() for e in walk_bundles(root)]


def spool_object_ids(root: Path) -> set[str]:
    ids: set[str] = set()
    for entry in walk_bundles(root):
        ids |= {obj["id"] for obj in json.loads(entry.path.read_bytes())["objects"]}
    return ids


def fill(files: SpoolFiles, per_feed: int = 3) -> list[Path]:
    return [
        files.add(feed, data=files.bundle_bytes(f"{feed}-{i}", n=3))
        for feed in (FEED_A, FEED_B, FEED_C)
        for i in range(per_feed)
    ]


def test_once_imports_the_spool_into_the_standin(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    paths = fill(files)
    expected_ids = spool_object_ids(spool.incoming)

    code, out = launch(["once", "--max-wait", "60"], uploader_env).finish()

    assert code == 0, out
    assert sorted(bundles(spool.done)) == sorted(files.rel(p) for p in paths)
    assert bundles(spool.incoming) == [] and bundles(spool.processing) == []
    assert opencti_standin.object_ids() == expected_ids
    assert len(opencti_standin.objects()) == len(expected_ids)
    for path in paths:
        done = spool.path_in("done", files.rel(path))
        receipt = json.loads(done.with_name(done.name + ".receipt").read_text())
        assert receipt["work_id"] in opencti_standin.works
        assert receipt["connector_id"] == uploader_env["CONNECTOR_ID"]
        assert opencti_standin.token not in done.with_name(done.name + ".receipt").read_text()
        work = opencti_standin.works[receipt["work_id"]]
        feed = files.rel(path).split("/")[0]
        assert work.name is not None
        assert work.name.startswith(f"CTX {feed} report--")
        assert work.processed


def test_platform_down_then_back_nothing_failed(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    paths = fill(files, per_feed=1)
    opencti_standin.go_down()
    uploader = launch(["once", "--max-wait", "120"], uploader_env)
    try:
        assert uploader.wait_for_line("retrying in"), uploader.stderr
    finally:
        opencti_standin.come_up()
    code, _out = uploader.finish()

    assert code == 0, uploader.stderr
    assert bundles(spool.failed) == []
    assert sorted(bundles(spool.done)) == sorted(files.rel(p) for p in paths)
    assert opencti_standin.token not in uploader.stderr


def test_wrong_token_leaves_files_pending(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    path = files.add(FEED_A)
    env = {**uploader_env, "OPENCTI_TOKEN": "wrong-token-0000"}

    code, out = launch(["once", "--max-wait", "1"], env).finish()

    assert code == 3, out
    assert bundles(spool.incoming) == [files.rel(path)]
    assert bundles(spool.failed) == [] and bundles(spool.done) == []


@pytest.mark.parametrize(
    ("command", "restart_instance"),
    [
        pytest.param("watch", "e2e", id="watch-restart-same-instance"),
        pytest.param("once", "e2e-other", id="once-restart-other-instance"),
    ],
)
def test_kill_9_mid_import_then_restart_loses_nothing(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
    command: str,
    restart_instance: str,
) -> None:
    paths = fill(files, per_feed=2)
    expected_ids = spool_object_ids(spool.incoming)
    # The first push hangs: the uploader is killed while a file is claimed and its work created.
    opencti_standin.slow(8.0, "StixBundlePush")
    first = launch([command, "--max-wait", "60"] if command == "once" else [command], uploader_env)
    claimed_dir = spool.processing / "e2e"
    assert wait_until(
        lambda: bool(bundles(claimed_dir)) and "workAdd" in opencti_standin.operations(),
        timeout=60,
    ), first.stderr
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    assert first.proc.returncode == -signal.SIGKILL
    assert bundles(claimed_dir), "the killed uploader should have left a claimed file"

    env = {**uploader_env, "UPLOADER_INSTANCE_ID": restart_instance}
    code, out = launch(["once", "--max-wait", "60"], env).finish()

    assert code == 0, out
    done = bundles(spool.done)
    assert sorted(done) == sorted(files.rel(p) for p in paths)
    assert len(done) == len(set(done))
    assert bundles(spool.processing) == [] and bundles(spool.incoming) == []
    assert bundles(spool.failed) == []
    assert expected_ids <= opencti_standin.object_ids()


def test_watch_imports_new_files_and_stops_cleanly_on_sigterm(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    first = files.add(FEED_A)
    watcher = launch(["watch"], uploader_env)
    assert wait_until(lambda: spool.path_in("done", files.rel(first)).is_file(), timeout=60), (
        watcher.stderr
    )
    second = files.add(FEED_B)
    assert wait_until(lambda: spool.path_in("done", files.rel(second)).is_file(), timeout=10), (
        watcher.stderr
    )
    watcher.proc.send_signal(signal.SIGTERM)
    code, out = watcher.finish(timeout=60)

    assert code == 0, watcher.stderr
    assert "done 2" in out
    assert bundles(spool.processing) == []
    # helper.stop() would have unregistered the connector and deleted its works.
    assert opencti_standin.deleted_connectors == []


def test_fetcher_then_uploader_puts_every_feed_object_into_opencti(
    spool: Spool,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
    tmp_path: Path,
) -> None:
    from tests.standins.ctx import CTXStandIn

    fetcher = Path(sys.executable).with_name("ctx-fetcher")
    if not fetcher.exists():
        pytest.skip("ctx-fetcher is not installed")
    with CTXStandIn(feeds=2, reports=5, orphans=6, seed=3) as ctx:
        fetch_env = {
            **uploader_env,
            "CYBERTHREATEXCHANGE_BASE_URL": ctx.base_url,
            "CYBERTHREATEXCHANGE_API_KEY": ctx.api_key,
            "CYBERTHREATEXCHANGE_FEED_IDS": ",".join(ctx.active_feed_ids),
        }
        fetched = subprocess.run(
            [str(fetcher), "once"],
            env=fetch_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert fetched.returncode == 0, fetched.stderr
        expected = set().union(*(ctx.expected_ids(feed) for feed in ctx.active_feed_ids))
    spooled = spool_object_ids(spool.incoming)
    assert spooled == expected

    code, out = launch(["once", "--max-wait", "60"], uploader_env).finish()

    assert code == 0, out
    assert bundles(spool.incoming) == [] and bundles(spool.failed) == []
    assert spool_object_ids(spool.done) == expected
    assert opencti_standin.object_ids() == expected
