"""``ctx-fetcher once`` passes run back to back while the CTX stand-in is written to, as the real
server is (:mod:`tests.standins.ctx_live`: vertices before relationships, late records below a
served ``next``, new versions of reports and members, page-by-page jobs, the identity touched).

After the writer settled, one pass catches up and two quiet passes must write nothing; then the
spool must hold every object's latest version, self-contained report files, and no version twice
(:mod:`tests.fetcher.live_checks`). A pass killed with SIGKILL during the writes loses nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.fetcher.live_checks import findings, read_spool, summary
from tests.reliability import harness
from tests.standins.ctx import CTXStandIn
from tests.standins.ctx_live import LiveWriter

LIVE_SETTINGS = {
    "CYBERTHREATEXCHANGE_OVERLAP_MINUTES": "15",
    "CYBERTHREATEXCHANGE_REPORT_GRACE_MINUTES": "60",
    "CONNECTOR_LOG_LEVEL": "info",
}


@pytest.fixture
def standin() -> Iterator[CTXStandIn]:
    # Overrides the conftest's world: two active feeds, a few reports to version from the start.
    with CTXStandIn(feeds=2, reports=4, orphans=8, seed=31) as server:
        yield server


@pytest.fixture
def live_env(env: dict[str, str]) -> dict[str, str]:
    return {**harness.base_env(), **env, **LIVE_SETTINGS}


def run_pass(env: dict[str, str], cwd: Path) -> None:
    proc = harness.fetcher(["once"], env, cwd)
    assert proc.wait(120) == 0, proc.text()


def passes_until_settled(writer: LiveWriter, env: dict[str, str], cwd: Path) -> int:
    """Passes back to back while the writer writes; the number of passes run."""
    count = 0
    try:
        while not writer.settle(timeout=0):
            run_pass(env, cwd)
            count += 1
    finally:
        writer.stop()
        assert writer.settle(60)
    return count


def catch_up_then_quiet(env: dict[str, str], cwd: Path, spool_dir: Path) -> list[str]:
    """One pass after the writes, then two that must write nothing; what those two wrote."""
    run_pass(env, cwd)
    before = {f.rel for f in read_spool(spool_dir)}
    for _ in range(2):
        run_pass(env, cwd)
    return sorted({f.rel for f in read_spool(spool_dir)} - before)


def _reached(standin: CTXStandIn, requests: int, proc: harness.Proc) -> bool:
    return len(standin.requests) >= requests or proc.proc.poll() is not None


def check(standin: CTXStandIn, spool_dir: Path, quiet_writes: list[str]) -> None:
    found = findings(standin, read_spool(spool_dir))
    found["quiet pass wrote a file"] = quiet_writes
    if any(found.values()):
        pytest.fail("\n" + summary(found))


@pytest.mark.timeout(180)
def test_passes_during_live_writes_lose_and_repeat_nothing(
    standin: CTXStandIn, live_env: dict[str, str], spool_dir: Path, tmp_path: Path
) -> None:
    writer = LiveWriter(standin, seed=41, uploads=44, seconds=14.0).start()

    passes = passes_until_settled(writer, live_env, tmp_path)
    quiet_writes = catch_up_then_quiet(live_env, tmp_path, spool_dir)

    # Passes must have overlapped the writes, or the scenario proves little.
    assert passes >= 3
    assert any(s.late for s in writer.steps)
    check(standin, spool_dir, quiet_writes)


@pytest.mark.timeout(180)
def test_a_pass_killed_during_live_writes_loses_nothing(
    standin: CTXStandIn, live_env: dict[str, str], spool_dir: Path, tmp_path: Path
) -> None:
    rng = random.Random(20261207)
    writer = LiveWriter(standin, seed=43, uploads=40, seconds=12.0).start()
    killed = 0
    try:
        first = len(standin.requests)
        run_pass(live_env, tmp_path)
        per_pass = len(standin.requests) - first
        for _ in range(2):
            # Seeded kill point: after a random number of the pass's requests (as many as a whole
            # pass made before), then a random fraction of a request later.
            start, target = len(standin.requests), rng.randrange(1, max(2, per_pass))
            proc = harness.fetcher(["once"], live_env, tmp_path)
            harness.wait_until(
                partial(_reached, standin, start + target, proc), timeout=60, step=0.005
            )
            time.sleep(rng.uniform(0.0, 0.05))
            if proc.proc.poll() is None:
                killed += 1
            proc.kill()
    except BaseException:
        writer.stop()
        raise
    passes_until_settled(writer, live_env, tmp_path)
    quiet_writes = catch_up_then_quiet(live_env, tmp_path, spool_dir)

    assert killed >= 1, "no kill landed inside a pass"
    check(standin, spool_dir, quiet_writes)
