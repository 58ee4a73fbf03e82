"""Fixtures of the reliability suite: stand-ins with the suite's secrets, a clean baseline spool,
a secrets guard around every test, and the results table at the end of the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import harness
from tests.reliability.harness import API_KEY, CTX_SHAPE, OPENCTI_TOKEN, Proc
from tests.standins.ctx import CTXStandIn
from tests.standins.opencti import OpenCTIStandIn

#: (items scanned, leaks) over the whole session, for the summary.
SECRET_TALLY = {"tests": 0, "items": 0, "leaks": 0}


@pytest.fixture
def ctx() -> Iterator[CTXStandIn]:
    with CTXStandIn(api_key=API_KEY, **CTX_SHAPE) as server:
        yield server


@pytest.fixture
def opencti() -> Iterator[OpenCTIStandIn]:
    with OpenCTIStandIn(OPENCTI_TOKEN) as server:
        yield server


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The spool a clean ``ctx-fetcher once`` writes for :data:`CTX_SHAPE` (relative paths)."""
    work = tmp_path_factory.mktemp("baseline")
    spool_dir = work / "spool"
    with CTXStandIn(api_key=API_KEY, **CTX_SHAPE) as server:
        env = harness.fetcher_env(server.base_url, server.active_feed_ids, spool_dir)
        proc = harness.fetcher(["once"], env, work)
        assert proc.wait(120) == 0, proc.text()
    paths = set(harness.bundles(spool_dir / "incoming"))
    assert paths
    return paths


@pytest.fixture(autouse=True)
def secrets_guard(tmp_path: Path) -> Iterator[None]:
    """After each test: no secret in any output of its processes or any file under tmp_path."""
    first = len(Proc.started)
    yield
    procs = Proc.started[first:]
    for proc in procs:
        if proc.proc.poll() is None:
            proc.kill()
    texts = [(" ".join(p.argv), p.text()) for p in procs]
    scanned, leaks = harness.scan_for_secrets(texts, [tmp_path])
    SECRET_TALLY["tests"] += 1
    SECRET_TALLY["items"] += scanned
    SECRET_TALLY["leaks"] += len(leaks)
    assert leaks == [], f"a secret appeared in: {leaks}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.RESULTS:
        return
    mode = "full (CTX_RELIABILITY_FULL=1)" if harness.FULL else "reduced (make test)"
    table = harness.results_table(harness.RESULTS)
    secrets = (
        f"Secrets: {SECRET_TALLY['items']} process outputs and files scanned after "
        f"{SECRET_TALLY['tests']} tests, {SECRET_TALLY['leaks']} containing the API key or token.\n"
    )
    text = f"Reliability suite, {mode} mode:\n\n{table}\n{secrets}"
    terminalreporter.write_sep("=", "reliability results")
    terminalreporter.write(text)
    target = os.environ.get("CTX_RELIABILITY_RESULTS")
    out = (
        Path(target)
        if target
        else terminalreporter.config._tmp_path_factory.getbasetemp() / ("reliability-results.md")
    )
    out.write_text(text, encoding="utf-8")
    terminalreporter.write_line(f"written to {out}")
