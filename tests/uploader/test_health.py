"""``ctx-uploader health`` against a real ``ctx-uploader watch`` process and the stand-in."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import pytest
from click.testing import Result

from shared.layout import Spool
from tests.standins.opencti import OpenCTIStandIn
from tests.uploader.conftest import (
    FEED_A,
    UPLOADER,
    FakeImporter,
    SpoolFiles,
    fast_settings,
    invoke,
    wait_until,
)
from uploader.ops.health import HEARTBEAT_NAME, Heartbeat, HeartbeatRecord, heartbeat_problems
from uploader.pipeline import Pipeline
from uploader.spool_ops.claim import InstanceLock

pytest_plugins = ["tests.standins.fixtures"]
pytestmark = pytest.mark.skipif(not UPLOADER.exists(), reason="ctx-uploader is not installed")


@pytest.fixture
def health_env(uploader_env: dict[str, str]) -> dict[str, str]:
    # Heartbeats every 0.5 s; silent for over 2 s is unhealthy.
    return {**uploader_env, "UPLOADER_HEALTH_MAX_SILENCE": "2"}


def health(env: dict[str, str]) -> Result:
    return invoke(["health"], env)


def flips_to(env: dict[str, str], needle: str, timeout: float = 30) -> Result:
    """Run ``health`` until it prints ``needle`` ("healthy": until it exits 0); return that."""
    results: list[Result] = []

    def check() -> bool:
        results.append(health(env))
        if needle == "healthy":
            return results[-1].exit_code == 0
        return needle in results[-1].output

    assert wait_until(check, timeout=timeout, step=0.25), results[-1].output
    return results[-1]


def test_health_follows_the_platform_and_the_process(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    health_env: dict[str, str],
    launch: Any,
) -> None:
    first = files.add(FEED_A)
    watcher = launch(["watch"], health_env)
    assert wait_until(lambda: spool.path_in("done", files.rel(first)).is_file(), timeout=60), (
        watcher.stderr
    )
    healthy = flips_to(health_env, "healthy")
    assert healthy.exit_code == 0, healthy.output
    beat = spool.processing / "e2e" / HEARTBEAT_NAME
    assert wait_until(lambda: json.loads(beat.read_text())["watcher_alive"] is True)
    assert json.loads(beat.read_text())["pid"] == watcher.proc.pid

    # Idle and the platform up: still healthy well past the silence bound (the uploader asks).
    time.sleep(3)
    assert health(health_env).exit_code == 0

    opencti_standin.go_down()
    down = flips_to(health_env, "OpenCTI has not answered")
    assert down.exit_code == 1
    assert down.output.count("\n") == 1

    opencti_standin.come_up()
    assert flips_to(health_env, "healthy").exit_code == 0

    watcher.proc.send_signal(signal.SIGSTOP)
    try:
        stuck = flips_to(health_env, "heartbeat is")
        assert stuck.exit_code == 1
    finally:
        watcher.proc.send_signal(signal.SIGCONT)
    assert flips_to(health_env, "healthy").exit_code == 0

    watcher.proc.kill()
    watcher.proc.wait(30)
    gone = health(health_env)
    assert gone.exit_code == 1
    assert f"pid {watcher.proc.pid}) is gone" in gone.output


def test_health_fails_on_an_old_pending_file(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    env = {**uploader_env, "UPLOADER_HEALTH_MAX_PENDING_AGE": "3600"}
    stuck = files.add(FEED_A)
    two_hours_ago = time.time() - 7200
    os.utime(stuck, (two_hours_ago, two_hours_ago))
    # The platform answers every call but refuses every push, transiently: the file stays pending.
    opencti_standin.fail("StixBundlePush", status=503, times=1_000_000)
    launch(["watch"], env)
    assert wait_until(lambda: len(opencti_standin.works) >= 1, timeout=60)

    result = flips_to(env, "oldest pending file")
    assert result.exit_code == 1
    assert files.rel(stuck) in result.output
    assert "OpenCTI has not answered" not in result.output

    assert invoke(["health"], {**env, "UPLOADER_HEALTH_MAX_PENDING_AGE": "86400"}).exit_code == 0


def test_health_without_a_heartbeat_is_unhealthy(env: dict[str, str]) -> None:
    result = invoke(["health"], env)
    assert result.exit_code == 1
    assert "no heartbeat at" in result.output
    assert "'cli'" in result.output


def test_health_refuses_a_directory_that_is_not_a_spool(env: dict[str, str], tmp_path: Any) -> None:
    result = invoke(["health"], {**env, "SPOOL_DIR": str(tmp_path / "nowhere")})
    assert result.exit_code == 1
    assert "does not exist" in result.output


def _record(**changes: Any) -> HeartbeatRecord:
    now = time.time()
    values: dict[str, Any] = {
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "instance": "i",
        "mode": "watch",
        "interval": 10.0,
        "started_at": now - 100,
        "updated_at": now,
        "last_platform_answer_at": now - 1,
        "watcher_alive": True,
    }
    values.update(changes)
    return HeartbeatRecord(**values)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({}, None, id="healthy"),
        pytest.param({"watcher_alive": False}, "watcher (watchdog observer) is dead", id="watcher"),
        pytest.param({"watcher_alive": None}, None, id="once-has-no-watcher"),
        pytest.param({"last_platform_answer_at": None}, "never since start", id="never-answered"),
        pytest.param({"stopped_at": time.time()}, "stopped at", id="stopped"),
    ],
)
def test_heartbeat_verdicts(changes: dict[str, Any], expected: str | None) -> None:
    problems = heartbeat_problems(_record(**changes), max_silence=60)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_health_flips_when_the_file_watcher_is_gone(spool: Spool, files: SpoolFiles) -> None:
    """A real pipeline watching with watchdog, its heartbeat, then its observer stopped."""
    stop = threading.Event()
    with InstanceLock(spool, "watcher") as lock:
        pipeline = Pipeline(spool, FakeImporter(), fast_settings(), lock)
        heartbeat = Heartbeat(
            spool,
            "watcher",
            mode="watch",
            max_silence=1.0,
            importer=None,
            watcher_alive=lambda: pipeline.intake.watcher_alive,
        )
        runner = threading.Thread(target=pipeline.run, args=(stop,), kwargs={"watch": True})
        with heartbeat:
            runner.start()
            try:
                beat = heartbeat.path
                assert wait_until(lambda: json.loads(beat.read_text())["watcher_alive"] is True)
                pipeline.intake.stop()
                assert wait_until(lambda: json.loads(beat.read_text())["watcher_alive"] is False)
                record = HeartbeatRecord.read(beat)
                problems = heartbeat_problems(record, max_silence=3600)
                assert problems == ["the file watcher (watchdog observer) is dead"]
            finally:
                stop.set()
                runner.join(30)
