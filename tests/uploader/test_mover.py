"""The mover process (uploader/mover.py): imported files moved to done/ beside the imports."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path, PurePosixPath

import pytest

from shared.durable import sha256_bytes
from shared.errors import SpoolError
from shared.layout import Spool
from tests.uploader.conftest import (
    FEED_A,
    FEED_B,
    FakeImporter,
    SpoolFiles,
    fast_options,
    run_once,
    wait_until,
)
from tests.uploader.test_pipeline import bundles_in, reason_of, receipt_of
from uploader import pipeline as pipeline_module
from uploader.claim import InstanceLock, claim
from uploader.importer import ImportReceipt
from uploader.mover import MoveJob, job_line, mover_env, serve

RECEIPT = ImportReceipt(work_id="work-7", connector_id="connector-1", pushes=1, objects=2)


def _job(job_id: int, claimed: Path, rel: str, sha256: str) -> bytes:
    return job_line(job_id, MoveJob(claimed, PurePosixPath(rel), RECEIPT, sha256, 1))


def _running_pipelines(monkeypatch: pytest.MonkeyPatch) -> list[pipeline_module.Pipeline]:
    """The pipelines made from now on (to reach the mover of the one a run makes)."""
    pipelines: list[pipeline_module.Pipeline] = []
    real_init = pipeline_module.Pipeline.__init__

    def remember(self: pipeline_module.Pipeline, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]
        pipelines.append(self)

    monkeypatch.setattr(pipeline_module.Pipeline, "__init__", remember)
    return pipelines


def _answers(sink: io.BytesIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in sink.getvalue().splitlines()]


def _no_move_here(*args: object, **kwargs: object) -> Path:
    raise AssertionError("moved in the importing process although the mover runs")


def test_serve_moves_each_job_and_answers_in_order(spool: Spool, files: SpoolFiles) -> None:
    paths = [files.add(FEED_A, minutes=m) for m in (1, 2)]
    rels = [files.rel(p) for p in paths]
    claimed = [claim(spool, "test", PurePosixPath(rel)) for rel in rels]
    digests = [sha256_bytes(c.read_bytes()) for c in claimed]
    source = io.BytesIO(
        b"".join(
            _job(i, c, r, d) for i, (c, r, d) in enumerate(zip(claimed, rels, digests, strict=True))
        )
    )
    sink = io.BytesIO()

    assert serve(spool, "test", source, sink) == 2

    assert _answers(sink) == [{"id": 0, "kind": "done"}, {"id": 1, "kind": "done"}]
    for rel, digest in zip(rels, digests, strict=True):
        done = spool.path_in("done", rel)
        assert sha256_bytes(done.read_bytes()) == digest
        receipt = receipt_of(done)
        assert receipt["work_id"] == "work-7" and receipt["instance"] == "test"
        assert receipt["sha256"] == digest and receipt["attempts"] == 1
    assert bundles_in(spool.processing) == []


def test_serve_answers_conflict_and_error_and_goes_on(spool: Spool, files: SpoolFiles) -> None:
    conflicting = files.add(FEED_A, minutes=1)
    rel = files.rel(conflicting)
    # done/ already holds other bytes under this name.
    other = spool.path_in("done", rel)
    other.parent.mkdir(parents=True)
    other.write_bytes(b'{"other": true}')
    claimed = claim(spool, "test", PurePosixPath(rel))
    missing = claimed.parent / "gone.json"
    good = files.add(FEED_B, minutes=2)
    good_claimed = claim(spool, "test", PurePosixPath(files.rel(good)))
    source = io.BytesIO(
        _job(0, claimed, rel, "x")
        + _job(1, missing, f"{FEED_A}/gone.json", "y")
        + _job(2, good_claimed, files.rel(good), "z")
    )
    sink = io.BytesIO()

    serve(spool, "test", source, sink)

    answers = _answers(sink)
    assert [a["kind"] for a in answers] == ["conflict", "error", "done"]
    assert "already exists" in str(answers[0]["message"])
    assert str(answers[1]["message"]).startswith("SpoolError")
    assert claimed.exists()  # a conflict is the pipeline's to fail; nothing was touched
    assert other.read_bytes() == b'{"other": true}'


def test_pipeline_with_the_mover_moves_every_file_outside_the_importing_process(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [files.add(feed, minutes=m) for feed in (FEED_A, FEED_B) for m in (3, 1, 2)]
    # The importing process's own move is broken: every file must still reach done/.
    monkeypatch.setattr(pipeline_module, "mark_done", _no_move_here)
    importer = FakeImporter()

    summary = run_once(spool, importer, move_process=True)

    assert summary.ok and summary.done == 6
    assert len(importer.calls) == 6
    for path in paths:
        done = spool.path_in("done", files.rel(path))
        assert receipt_of(done)["sha256"] == sha256_bytes(done.read_bytes())
    assert bundles_in(spool.incoming) == [] and bundles_in(spool.processing) == []
    # Within a feed, still in name order (minutes 1, 2, 3).
    feed_a = [spool.path_in("done", files.rel(paths[i])).read_bytes() for i in (1, 2, 0)]
    assert [b for name, b in importer.calls if FEED_A in name] == feed_a


def test_a_conflict_found_by_the_mover_fails_the_file(spool: Spool, files: SpoolFiles) -> None:
    path = files.add(FEED_A)
    rel = files.rel(path)
    other = spool.path_in("done", rel)
    other.parent.mkdir(parents=True)
    other.write_bytes(b'{"different": "bytes"}')
    importer = FakeImporter()

    summary = run_once(spool, importer, move_process=True)

    assert summary.done == 0 and summary.failed == 1
    failed = spool.path_in("failed", rel)
    assert failed.exists()
    assert reason_of(failed)["kind"] == "conflict"
    assert other.read_bytes() == b'{"different": "bytes"}'
    assert bundles_in(spool.processing) == []


def test_a_mover_that_dies_loses_nothing_and_imports_nothing_twice(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [files.add(FEED_A, minutes=m) for m in range(1, 13)]
    pipelines = _running_pipelines(monkeypatch)

    def behaviour(work_name: str, bundle: bytes) -> None:
        if len(importer.calls) == 5:
            mover = pipelines[0]._mover
            assert mover is not None
            os.kill(mover.pid, signal.SIGKILL)

    importer = FakeImporter(behaviour=behaviour)

    summary = run_once(spool, importer, move_process=True)

    assert summary.ok and summary.done == 12
    assert len(importer.calls) == 12  # imported once each: lost answers were moved, not redone
    for path in paths:
        done = spool.path_in("done", files.rel(path))
        assert receipt_of(done)["sha256"] == sha256_bytes(done.read_bytes())
    assert bundles_in(spool.processing) == []


def test_a_failing_move_in_the_mover_is_retried_by_the_uploader(
    spool: Spool,
    files: SpoolFiles,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = files.add(FEED_A)
    # The mover cannot move the file (a file where done/<feed>/ should be); the uploader's own
    # retry, which never imports again, finds it fixed.
    rel = files.rel(path)
    blocker = spool.done / FEED_A
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a folder")
    real_mark_done = pipeline_module.mark_done

    def fixed_then_move(*args: object, **kwargs: object) -> Path:
        if blocker.is_file():
            blocker.unlink()
        return real_mark_done(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline_module, "mark_done", fixed_then_move)
    importer = FakeImporter()

    with caplog.at_level("WARNING", logger="uploader.pipeline"):
        summary = run_once(spool, importer, move_process=True)

    assert summary.ok and summary.done == 1
    assert len(importer.calls) == 1
    assert any("the mover could not move" in r.getMessage() for r in caplog.records)
    assert receipt_of(spool.path_in("done", rel))["work_id"] == "work-1"


def test_the_mover_never_sees_a_secret() -> None:
    env = {
        "PATH": "/usr/bin",
        "OPENCTI_TOKEN": "t",
        "OPENCTI_URL": "http://x",
        "CYBERTHREATEXCHANGE_API_KEY": "k",
        "SPOOL_SIGNING_KEY": "s",
        "MQ_PASSWORD": "p",
        "AWS_SECRET_ACCESS_KEY": "a",
        "GITHUB_TOKEN": "g",
        "SPOOL_DIR": "/spool",
        "LANG": "C.UTF-8",
    }
    assert mover_env(env) == {"PATH": "/usr/bin", "SPOOL_DIR": "/spool", "LANG": "C.UTF-8"}


def test_the_running_mover_has_no_token_in_its_environment(
    spool: Spool, files: SpoolFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENCTI_TOKEN", "secret-token-for-the-mover-test")
    files.add(FEED_A)
    seen: list[bytes] = []
    pipelines = _running_pipelines(monkeypatch)

    def behaviour(work_name: str, bundle: bytes) -> None:
        mover = pipelines[0]._mover
        assert mover is not None
        seen.append(Path(f"/proc/{mover.pid}/environ").read_bytes())

    summary = run_once(spool, FakeImporter(behaviour=behaviour), move_process=True)

    assert summary.done == 1
    assert seen and b"PATH=" in seen[0]
    assert b"secret-token-for-the-mover-test" not in seen[0]


def test_the_mover_exits_when_the_uploader_is_killed(tmp_path: Path) -> None:
    # An uploader killed with SIGKILL leaves no mover behind: its input ends, it exits.
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys, time
            child = subprocess.Popen(
                [sys.executable, "-m", "uploader.mover", {str(tmp_path / "spool")!r}, "x"],
                stdin=subprocess.PIPE,
            )
            print(child.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    assert parent.stdout is not None
    mover_pid = int(parent.stdout.readline())
    assert Path(f"/proc/{mover_pid}").exists()
    parent.kill()
    parent.wait()
    parent.stdout.close()

    def gone() -> bool:
        try:
            state = Path(f"/proc/{mover_pid}/stat").read_text().split()[2]
        except FileNotFoundError:
            return True
        return state == "Z"

    assert wait_until(gone, timeout=10)


def test_the_mover_ignores_the_terminals_ctrl_c(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "uploader.mover", str(tmp_path), "x"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdin is not None and proc.stdout is not None
    # Give the interpreter time to install its handlers before the signal.
    assert wait_until(
        lambda: (
            "SigIgn" in Path(f"/proc/{proc.pid}/status").read_text()
            and int(Path(f"/proc/{proc.pid}/status").read_text().split("SigIgn:")[1].split()[0], 16)
            & (1 << (signal.SIGINT - 1))
            != 0
        ),
        timeout=10,
    )
    proc.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    proc.stdout.close()


def test_spool_error_is_what_a_missing_claim_raises(spool: Spool) -> None:
    # The 'error' answer above relies on mark_done raising SpoolError for a vanished claim.
    from uploader.outcome import mark_done

    with pytest.raises(SpoolError):
        mark_done(
            spool,
            spool.root / "processing" / "nobody" / "x.json",
            PurePosixPath(f"{FEED_A}/x.json"),
            RECEIPT,
            instance="test",
            sha256="x",
            attempts=1,
        )


def test_a_file_the_dead_mover_had_moved_already_is_counted_done_without_a_stale_reason(
    spool: Spool, files: SpoolFiles
) -> None:
    # The mover moved the file and died before answering: the uploader finds the claim gone and
    # the bundle in done/, and counts it done (not a conflict, no reason file in failed/).
    path = files.add(FEED_A)
    rel = PurePosixPath(files.rel(path))
    claimed = claim(spool, "test", rel)
    digest = sha256_bytes(claimed.read_bytes())
    source = io.BytesIO(_job(0, claimed, str(rel), digest))
    serve(spool, "test", source, io.BytesIO())
    assert not claimed.exists()
    with InstanceLock(spool, "test") as lock:
        pipeline = pipeline_module.Pipeline(spool, FakeImporter(), fast_options(), lock)
        imported = pipeline_module._Imported(
            claimed=claimed, rel=rel, receipt=RECEIPT, sha256=digest, attempts=1, feed=FEED_A
        )

        pipeline._moved(imported, "lost", "the mover process ended")

        result = pipeline.events.get(timeout=10)
    assert isinstance(result, pipeline_module._Result)
    assert (result.kind, result.released) == ("done", True)
    assert spool.path_in("done", rel).exists()
    assert list(spool.failed.rglob("*")) == []


def test_without_a_mover_the_uploader_moves_files_itself(
    spool: Spool,
    files: SpoolFiles,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paths = [files.add(FEED_A, minutes=m) for m in (1, 2)]
    monkeypatch.setattr(sys, "executable", "")
    importer = FakeImporter()

    with caplog.at_level("WARNING", logger="uploader.pipeline"):
        summary = run_once(spool, importer, move_process=True)

    assert summary.ok and summary.done == 2
    assert any("cannot start the mover process" in r.getMessage() for r in caplog.records)
    for path in paths:
        done = spool.path_in("done", files.rel(path))
        assert receipt_of(done)["sha256"] == sha256_bytes(done.read_bytes())
