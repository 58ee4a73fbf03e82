"""Files built in worker processes: the same files as in the fetcher's own process, errors whole,
and no worker left behind when the fetcher is killed."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from fetcher.errors import CTXHTTPError, FetcherError, LedgerError
from fetcher.files.workers import Workers, _start_worker, outcome
from fetcher.files.writer import FileWriter
from fetcher.state.ledger import Ledger
from fetcher.state.mirror import Mirror
from shared.errors import SpoolError, UnsafeNameError
from shared.layout import Spool

FEED = "0b2d4e5f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
IDENTITY = "identity--5b1e2d3c-4f5a-4b6c-8d7e-9f0a1b2c3d4e"


def _objects(reports: int) -> list[dict[str, object]]:
    objs: list[dict[str, object]] = [
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": IDENTITY,
            "created": "2025-01-01T00:00:00.000Z",
            "modified": "2025-01-01T00:00:00.000Z",
            "name": "producer",
        }
    ]
    for n in range(reports):
        indicator = f"indicator--7e2b3a3c-0d4f-4c55-9a57-{n:012d}"
        objs.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": indicator,
                "created": "2025-01-02T00:00:00.000Z",
                "modified": "2025-01-02T00:00:00.000Z",
                "pattern": f"[ipv4-addr:value = '198.51.100.{n % 250}']",
                "pattern_type": "stix",
                "valid_from": "2025-01-02T00:00:00Z",
                "created_by_ref": IDENTITY,
            }
        )
        objs.append(
            {
                "type": "report",
                "spec_version": "2.1",
                "id": f"report--1d2c3b4a-5e6f-4a7b-8c9d-{n:012d}",
                "created": "2025-01-03T00:00:00.000Z",
                "modified": f"2025-01-{3 + n % 20:02d}T00:00:00.000Z",
                "name": f"report {n}",
                "published": "2025-01-03T00:00:00Z",
                "object_refs": [indicator],
                "created_by_ref": IDENTITY,
            }
        )
    return objs


def _ledger(tmp_path: Path, objects: list[dict[str, object]]) -> tuple[Ledger, Mirror]:
    ledger = Ledger(tmp_path / "state")
    mirror = ledger.mirror
    mirror.apply_pages(FEED, [(objects, "")])
    return ledger, mirror


def _report_ids(mirror: Mirror) -> list[str]:
    return [i for ids in mirror.pending(FEED, reports=True, limit=1000) for i in ids]


def test_errors_cross_processes_whole() -> None:
    errors: list[Exception] = [
        LedgerError("state failed", path=Path("/state/fetcher.sqlite3"), feed_id=FEED),
        CTXHTTPError("server error", path="/v1/feeds/", status_code=503, feed_id=FEED),
        FetcherError("report has no time", feed_id=FEED),
        SpoolError("cannot write", "/spool/incoming/x.json"),
        UnsafeNameError("STIX id", "../../etc/passwd"),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
        assert type(back) is type(error)
        assert str(back) == str(error)
        assert back.__dict__ == error.__dict__


def test_files_built_in_processes_are_the_files_built_inline(tmp_path: Path) -> None:
    ledger, mirror = _ledger(tmp_path, _objects(40))
    ids = _report_ids(mirror)
    assert len(ids) == 40
    spools = {"processes": Spool(tmp_path / "p"), "inline": Spool(tmp_path / "i")}
    built = {}
    for name, processes in (("processes", 2), ("inline", 0)):
        writer = FileWriter(spools[name], FEED)
        with Workers(ledger, processes=processes) as workers:
            futures = [workers.reports(writer, ids[at : at + 7]) for at in range(0, 40, 7)]
            built[name] = [b for future in futures for b in outcome(future, FEED)]
    ledger.close()
    assert [(b.subject, b.sha, b.rel, b.shas) for b in built["processes"]] == [
        (b.subject, b.sha, b.rel, b.shas) for b in built["inline"]
    ]
    assert all(b.written for b in built["processes"])
    for b in built["processes"]:
        made = spools["processes"].path_in("incoming", b.rel).read_bytes()
        assert made == spools["inline"].path_in("incoming", b.rel).read_bytes()
        assert len(b.shas) == 3  # the report, its indicator and the identity that made both


def test_an_error_in_a_worker_comes_back_whole(tmp_path: Path) -> None:
    # A report with no modified, created or record time cannot be named (fetcher.files.writer).
    report: dict[str, object] = {
        "type": "report",
        "spec_version": "2.1",
        "id": "report--1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "name": "no time",
        "object_refs": [],
    }
    ledger, mirror = _ledger(tmp_path, [report])
    with Workers(ledger, processes=2) as workers:
        future = workers.reports(FileWriter(Spool(tmp_path / "spool"), FEED), _report_ids(mirror))
        with pytest.raises(FetcherError, match="has no modified, created or record time") as err:
            outcome(future, FEED)
    ledger.close()
    assert err.value.feed_id == FEED


def test_a_dead_worker_fails_the_feed_with_a_fetcher_error() -> None:
    future: Future[list[object]] = Future()
    future.set_exception(BrokenProcessPool("a process was terminated abruptly"))
    with pytest.raises(FetcherError, match="ended unexpectedly") as err:
        outcome(future, FEED)
    assert err.value.feed_id == FEED


def test_workers_ignore_sigint(tmp_path: Path) -> None:
    # A Ctrl-C reaches the whole process group; the fetcher decides how the pass stops.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(
        1, mp_context=context, initializer=_start_worker, initargs=(str(tmp_path), os.getpid())
    ) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        here = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{here}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{here}/task/{task}/children") as fh:
                    kids = [int(p) for p in fh.read().split()]
            except OSError:
                continue
            found.update(kids)
            todo.extend(kids)
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_no_worker_outlives_a_killed_fetcher(tmp_path: Path) -> None:
    ledger, _mirror = _ledger(tmp_path, _objects(8))
    ledger.close()
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from fetcher.files.writer import FileWriter
        from fetcher.state.ledger import Ledger
        from fetcher.files.workers import Workers, outcome
        from shared.layout import Spool

        if __name__ == "__main__":
            ledger = Ledger(Path({str(tmp_path / "state")!r}))
            mirror = ledger.mirror
            ids = [i for ids in mirror.pending({FEED!r}, reports=True) for i in ids]
            writer = FileWriter(Spool(Path({str(tmp_path / "spool")!r})), {FEED!r})
            workers = Workers(ledger, processes=3)
            futures = [workers.reports(writer, [i]) for i in ids]
            for future in futures:
                outcome(future, {FEED!r})
            print("ready", flush=True)
            time.sleep(600)
        """
    )
    (tmp_path / "hold.py").write_text(script)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "hold.py")],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        helpers = _descendants(proc.pid)
        # The fork server and the workers it forked (and multiprocessing's resource tracker).
        assert len(helpers) >= 3
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in helpers):
        time.sleep(0.05)
    assert not [pid for pid in helpers if _running(pid)]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_after_a_worker_is_killed_new_workers_take_over(tmp_path: Path) -> None:
    ledger, mirror = _ledger(tmp_path, _objects(4))
    ids = _report_ids(mirror)
    writer = FileWriter(Spool(tmp_path / "spool"), FEED)
    with Workers(ledger, processes=2) as workers:
        assert outcome(workers.reports(writer, ids[:1]), FEED)
        # The workers are the fork server's children: this process's grandchildren.
        direct = _descendants(os.getpid()) - {
            pid for child in _descendants(os.getpid()) for pid in _descendants(child)
        }
        killed = _descendants(os.getpid()) - direct
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(pid) for pid in killed):
            time.sleep(0.02)
        # A task handed over before the pool noticed the deaths fails with a FetcherError; once
        # it has noticed, the next task gets new workers.
        built = None
        for _ in range(100):
            try:
                built = outcome(workers.reports(writer, ids[1:]), FEED)
                break
            except FetcherError as exc:
                assert "ended unexpectedly" in str(exc)
                time.sleep(0.05)
    ledger.close()
    assert built is not None
    assert [b.subject for b in built] == ids[1:]
