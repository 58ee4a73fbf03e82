"""What the platform tells the uploader back: its queue size (backpressure) and a work's errors.

Real pycti against the OpenCTI stand-in: the stand-in reports a settable size for the connector's
queue (``connector_queue_details``) and completes works with the errors its "workers" report.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import pytest

from shared.layout import Spool
from tests.standins.opencti import OpenCTIStandIn
from tests.uploader.conftest import FEED_A, FEED_B, SpoolFiles, run_once
from uploader.errors import TransientImportError, WorkErrorsError
from uploader.importing.backpressure import QueueGate, QueuePaused
from uploader.importing.chunking import read_bundle
from uploader.importing.opencti import PyctiImporter

pytest_plugins = ["tests.standins.fixtures"]

_MB = 1_000_000


def _messages(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


def test_pushes_pause_while_the_queue_is_over_the_threshold_and_resume_after(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    files: SpoolFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="uploader.importing.backpressure")
    opencti_standin.set_queue_size(620 * _MB, messages=41)
    settings = make_settings(opencti_standin, queue_threshold=500)
    data = [files.bundle_bytes(f"paused {n}") for n in range(3)]
    receipts: list[Any] = []
    errors: list[BaseException] = []
    with PyctiImporter(settings, queue_check_interval=0.05) as importer:

        def run(payload: bytes) -> None:
            try:
                receipts.append(importer.import_bundle("w", read_bundle(payload, 1 << 20)))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(d,)) for d in data]
        for thread in threads:
            thread.start()
        # Several looks at the queue, every one over the threshold: nothing pushed, no work made.
        assert opencti_standin.wait_for(lambda: opencti_standin.queue_reads >= 5)
        assert _messages(caplog, "pausing pushes") and not _messages(caplog, "resuming pushes")
        assert opencti_standin.pushes == [] and opencti_standin.works == {}
        opencti_standin.set_queue_size(120 * _MB)
        for thread in threads:
            thread.join(timeout=30)

    assert not errors
    assert len(receipts) == 3 and len(opencti_standin.pushes) == 3
    # One pause: one line for it, with the size and the threshold; one for the end of it.
    [paused] = _messages(caplog, "pausing pushes")
    assert "620.0 MB" in paused and "CONNECTOR_QUEUE_THRESHOLD=500 MB" in paused
    [resumed] = _messages(caplog, "resuming pushes")
    assert "120.0 MB" in resumed


def test_a_queue_under_the_threshold_is_asked_once_per_interval(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    files: SpoolFiles,
) -> None:
    opencti_standin.set_queue_size(499 * _MB)  # under 500: pycti's own comparison is "<"
    with PyctiImporter(make_settings(opencti_standin), queue_check_interval=3600) as importer:
        for n in range(4):
            importer.import_bundle("w", read_bundle(files.bundle_bytes(str(n)), 1 << 20))
    assert opencti_standin.queue_reads == 1
    assert len(opencti_standin.pushes) == 4


def test_stopping_while_paused_leaves_the_file_pending(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    files: SpoolFiles,
) -> None:
    opencti_standin.set_queue_size(501 * _MB)
    importer = PyctiImporter(make_settings(opencti_standin), queue_check_interval=0.05)
    stopped = threading.Timer(0.5, importer.close)
    stopped.start()
    with pytest.raises(TransientImportError, match="over its threshold"):
        importer.import_bundle("w", read_bundle(files.bundle_bytes("x"), 1 << 20))
    stopped.join()
    assert opencti_standin.pushes == []


def test_the_gate_logs_once_per_pause_and_lets_pushes_through_when_it_cannot_look(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="uploader.importing.backpressure")
    sizes = iter([700.0, 800.0, 10.0, 900.0, 0.0])
    ticks = itertools.count()  # every look of the clock is a new interval: every wait() looks
    gate = QueueGate(
        lambda: next(sizes), 500, check_interval=0.01, clock=lambda: float(next(ticks))
    )

    gate.wait()  # 700 and 800: paused; 10: through
    assert len(_messages(caplog, "pausing pushes")) == 1
    assert len(_messages(caplog, "resuming pushes")) == 1
    gate.wait()  # 900: a second pause; 0: through
    assert len(_messages(caplog, "pausing pushes")) == 2
    assert len(_messages(caplog, "resuming pushes")) == 2
    assert next(sizes, None) is None  # every size was looked at: each wait() ran to the end

    def broken() -> float:
        raise ConnectionError("platform down")

    caplog.clear()
    open_gate = QueueGate(broken, 500, check_interval=0.01)
    open_gate.wait()  # a failed look lets the push go (the push meets the outage itself)
    assert _messages(caplog, "cannot read the connector's queue size")
    assert not _messages(caplog, "pausing pushes")

    closed = QueueGate(lambda: 501.0, 500, check_interval=0.01)
    closed.close()
    with pytest.raises(QueuePaused):
        closed.wait()


def test_a_work_completed_with_errors_is_a_work_errors_failure(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    files: SpoolFiles,
) -> None:
    data = files.bundle_bytes("errors")
    objects = json.loads(data)["objects"]
    refused = objects[0]["id"]
    opencti_standin.refuse_object(refused, "Element(s) not found: the pattern cannot be parsed")
    settings = make_settings(opencti_standin, wait_for_work=True, work_timeout=10)
    with (
        PyctiImporter(settings, work_poll_interval=0.01) as importer,
        pytest.raises(WorkErrorsError) as info,
    ):
        importer.import_bundle("w", read_bundle(data, 1 << 20))

    [error] = info.value.errors
    assert error["message"] == "Element(s) not found: the pattern cannot be parsed"
    assert json.loads(error["source"])["id"] == refused
    assert info.value.work_id in opencti_standin.works
    assert "the pattern cannot be parsed" in str(info.value) and refused in str(info.value)


def test_wait_for_work_errors_land_in_the_reason_file(
    pycti_env: None,
    opencti_standin: OpenCTIStandIn,
    make_settings: Callable[..., Any],
    spool: Spool,
    files: SpoolFiles,
) -> None:
    bad = files.add(FEED_A, seed="one refused object")
    good = files.add(FEED_B, seed="all accepted")
    refused = json.loads(bad.read_bytes())["objects"][0]["id"]
    opencti_standin.refuse_object(refused, "Invalid value for pattern")
    settings = make_settings(opencti_standin, wait_for_work=True, work_timeout=10)
    with PyctiImporter(settings, work_poll_interval=0.01) as importer:
        summary = run_once(spool, importer)

    assert (summary.done, summary.failed) == (1, 1)
    failed = spool.path_in("failed", PurePosixPath(files.rel(bad)))
    reason = json.loads(failed.with_name(failed.name + ".reason").read_text())
    assert reason["kind"] == "work-errors"
    assert reason["work_id"] in opencti_standin.works
    [error] = reason["platform_errors"]
    assert error["message"] == "Invalid value for pattern"
    assert json.loads(error["source"])["id"] == refused
    assert "Invalid value for pattern" in reason["message"]
    assert spool.path_in("done", PurePosixPath(files.rel(good))).exists()
