"""The uploader under SIGKILL, a platform outage, and several uploaders sharing one spool."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.reliability import harness
from tests.reliability.harness import Row, record
from tests.standins.opencti import OpenCTIStandIn

KILLS = harness.runs(5, 20)


def pushes_by_bundle(opencti: OpenCTIStandIn) -> Counter[str]:
    with opencti.lock:
        return Counter(str(p.bundle.get("id")) for p in opencti.pushes)


def mid_flight(spool_dir: Path, done_at_least: int) -> bool:
    states = harness.states_of(spool_dir)
    return len(states["done"]) >= done_at_least and bool(states["processing"])


@pytest.mark.timeout(900)
def test_uploader_sigkill_mid_import_then_restart(opencti: OpenCTIStandIn, tmp_path: Path) -> None:
    rng = random.Random(5)
    lost = duplicated = wrong = files = mid_import = 0
    problems: list[str] = []
    for run in range(KILLS):
        spool_dir = tmp_path / f"run{run}" / "spool"
        expected = harness.fill_spool(spool_dir, feeds=3, per_feed=6, tag=f"kill{run}")
        files += len(expected)
        env = harness.uploader_env(opencti.url, spool_dir, "first")
        # Every push takes a while, so that the kill lands while files are claimed.
        opencti.slow(0.15, "StixBundlePush", times=10**6)
        first = harness.uploader(["watch"], env, spool_dir.parent)
        # Seeded kill point: after a random number of files are done, while others are claimed
        # (a work created, a push in flight), a random fraction of a push later.
        target = rng.randrange(0, len(expected) - 3)
        assert harness.wait_until(lambda d=spool_dir, t=target: mid_flight(d, t), timeout=60), (
            first.text()[-3000:]
        )
        time.sleep(rng.uniform(0.0, 0.15))
        claimed = harness.states_of(spool_dir)["processing"]
        first.kill()
        mid_import += bool(claimed)
        opencti.clear_faults()
        # Half the restarts reuse the dead instance's name, half are another uploader.
        again_env = {**env, "UPLOADER_INSTANCE_ID": "first" if run % 2 else "second"}
        again = harness.uploader(["once", "--max-wait", "60"], again_env, spool_dir.parent)
        code = again.wait(180)
        states = harness.states_of(spool_dir)
        done = Counter(states["done"])
        lost += len(set(expected) - set(done))
        duplicated += sum(n - 1 for n in done.values() if n > 1)
        stuck = states["processing"] + states["incoming"]
        wrong += len(states["failed"]) + len(stuck)
        if code != 0:
            problems.append(f"run {run}: restart exited {code}: {again.text()[-2000:]}")
        missing_receipts = [
            rel for rel in done if not (spool_dir / "done" / f"{rel}.receipt").is_file()
        ]
        problems += [f"run {run}: no receipt for {rel}" for rel in missing_receipts]
        pushed = pushes_by_bundle(opencti)
        problems += [
            f"run {run}: {rel} never reached OpenCTI"
            for rel, bundle_id in expected.items()
            if pushed[bundle_id] == 0
        ]
    record(
        Row(
            "Uploader SIGKILL mid-import + restart",
            KILLS,
            KILLS,
            files,
            lost,
            duplicated,
            wrong,
            note=f"{mid_import} kills with files claimed; wrong = failed/ or stuck",
        )
    )
    assert problems == []
    assert lost == 0 and duplicated == 0 and wrong == 0
    assert mid_import >= max(1, KILLS * 3 // 4)


OUTAGE_SECONDS = harness.runs(6, 20)


@pytest.mark.timeout(600)
def test_platform_down_for_the_whole_run_then_up(opencti: OpenCTIStandIn, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    expected = harness.fill_spool(spool_dir, feeds=3, per_feed=3, tag="outage")
    opencti.go_down()
    env = harness.uploader_env(
        opencti.url, spool_dir, "outage", UPLOADER_RETRY_INITIAL="0.2", UPLOADER_RETRY_MAX="2"
    )
    proc = harness.uploader(["watch"], env, tmp_path)
    assert proc.wait_for_line("retrying in", timeout=60), proc.text()
    cpu0, wall0 = harness.cpu_seconds(proc.pid), time.monotonic()
    time.sleep(OUTAGE_SECONDS)
    cpu = harness.cpu_seconds(proc.pid) - cpu0
    wall = time.monotonic() - wall0
    failed_during = harness.states_of(spool_dir)["failed"]
    opencti.come_up()
    assert harness.wait_until(
        lambda: len(harness.states_of(spool_dir)["done"]) == len(expected), timeout=60
    ), proc.text()[-3000:]
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    states = harness.states_of(spool_dir)
    delays = [
        float(m.group(1))
        for line in proc.lines
        for m in [re.search(r"\(attempt \d+\), retrying in ([0-9.]+)s", line)]
        if m
    ]
    record(
        Row(
            "OpenCTI down for the whole run, then up",
            1,
            len(delays),
            len(expected),
            len(set(expected) - set(states["done"])),
            len(states["done"]) - len(set(states["done"])),
            len(states["failed"]) + len(failed_during),
            note=f"{wall:.0f} s down, uploader CPU {100 * cpu / wall:.1f}% while waiting, "
            f"retry waits up to {max(delays, default=0):.1f} s",
        )
    )
    assert code == 0, proc.text()[-3000:]
    assert failed_during == [] and states["failed"] == []
    assert sorted(states["done"]) == sorted(expected)
    assert states["incoming"] == [] and states["processing"] == []
    # Backoff is visible in the logs: waits grow from the initial value up to the maximum.
    assert len(delays) >= 3 and max(delays) > 2 * min(delays), delays
    assert max(delays) <= 2.0 * 1.25
    # No busy loop while the platform is down.
    assert cpu / wall < 0.2, f"{cpu:.2f} s CPU in {wall:.1f} s"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("count", [pytest.param(2, id="two"), pytest.param(4, id="four")])
def test_uploaders_sharing_a_spool_import_each_file_once(
    opencti: OpenCTIStandIn, tmp_path: Path, count: int
) -> None:
    rounds = harness.runs(1, 3)
    files = duplicated = lost = wrong = 0
    for round_ in range(rounds):
        spool_dir = tmp_path / f"round{round_}" / "spool"
        expected = harness.fill_spool(
            spool_dir, feeds=6, per_feed=harness.runs(6, 10), tag=f"conc{count}-{round_}"
        )
        files += len(expected)
        before = pushes_by_bundle(opencti)
        opencti.slow(0.02, "StixBundlePush", times=10**6)
        procs = [
            harness.uploader(
                ["once", "--max-wait", "60"],
                harness.uploader_env(opencti.url, spool_dir, f"uploader-{i}"),
                spool_dir.parent,
            )
            for i in range(count)
        ]
        codes = [p.wait(300) for p in procs]
        opencti.clear_faults()
        pushed = pushes_by_bundle(opencti) - before
        states = harness.states_of(spool_dir)
        duplicated += sum(pushed[b] - 1 for b in expected.values() if pushed[b] > 1)
        lost += sum(1 for b in expected.values() if pushed[b] == 0)
        lost += len(set(expected) - set(states["done"]))
        wrong += len(states["failed"]) + len(states["incoming"]) + len(states["processing"])
        assert codes == [0] * count, [p.text()[-1500:] for p in procs]
    record(
        Row(
            f"{count} uploaders on one spool",
            rounds,
            0,
            files,
            lost,
            duplicated,
            wrong,
            note="duplicated = pushes to OpenCTI beyond one per file",
        )
    )
    assert lost == 0 and duplicated == 0 and wrong == 0


@pytest.mark.timeout(300)
def test_uploader_spool_full_then_space_freed(opencti: OpenCTIStandIn, tmp_path: Path) -> None:
    """The whole spool on a small tmpfs filled up: receipts cannot be written; nothing fails."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(spool_dir)],
        capture_output=True,
        check=False,
    )
    if os.geteuid() != 0 or mounted.returncode != 0:
        pytest.skip("needs root and a tmpfs mount")
    try:
        expected = harness.fill_spool(spool_dir, feeds=2, per_feed=4, tag="full")
        for state in ("done", "failed", "processing"):
            (spool_dir / state).mkdir()
        filler = spool_dir / "filler"
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as fh:
            while True:
                fh.write(b"\0" * 4096)
        env = harness.uploader_env(opencti.url, spool_dir, "full")
        proc = harness.uploader(["watch"], env, tmp_path)
        assert proc.wait_for_line("No space left on device", timeout=60), proc.text()[-3000:]
        failed_while_full = harness.states_of(spool_dir)["failed"]
        filler.unlink()
        assert harness.wait_until(
            lambda: len(harness.states_of(spool_dir)["done"]) == len(expected), timeout=60
        ), proc.text()[-3000:]
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        states = harness.states_of(spool_dir)
        receipts = [r for r in states["done"] if (spool_dir / "done" / f"{r}.receipt").is_file()]
        temps = [str(p) for p in spool_dir.rglob(".*.tmp")]
        record(
            Row(
                "Uploader spool full (2 MB tmpfs), then space freed",
                1,
                1,
                len(expected),
                len(set(expected) - set(states["done"])),
                len(states["done"]) - len(set(states["done"])),
                len(failed_while_full) + len(states["failed"]) + len(temps),
                note="receipts fail with ENOSPC; files stay pending, then done",
            )
        )
        assert code == 0, proc.text()[-3000:]
        assert failed_while_full == [] and states["failed"] == []
        assert sorted(states["done"]) == sorted(expected) and len(receipts) == len(expected)
        assert states["incoming"] == [] and states["processing"] == []
        assert temps == []
    finally:
        subprocess.run(["umount", "-l", str(spool_dir)], check=False)
