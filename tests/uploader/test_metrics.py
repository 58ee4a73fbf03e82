"""The uploader's /metrics, scraped over HTTP from a real ``ctx-uploader watch`` process."""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.durable import publish_bytes, sha256_bytes
from shared.layout import Spool, SpoolName, relative_path
from tests.standins.opencti import OpenCTIStandIn
from tests.uploader.conftest import (
    BASE_TIME,
    FEED_A,
    FEED_B,
    FEED_C,
    UPLOADER,
    SpoolFiles,
    invoke,
    wait_until,
)

pytest_plugins = ["tests.standins.fixtures"]
pytestmark = pytest.mark.skipif(not UPLOADER.exists(), reason="ctx-uploader is not installed")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_match_status_while_watch_runs(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    port = free_port()
    env = {
        **uploader_env,
        "CONNECTOR_EXPOSE_METRICS": "true",
        "CONNECTOR_METRICS_PORT": str(port),
        "CONNECTOR_METRICS_ADDRESS": "127.0.0.1",
    }
    good = [files.add(feed) for feed in (FEED_A, FEED_B, FEED_C) for _ in range(2)]
    # Not a bundle: refused before any import, so failed/ gets one file of feed C.
    not_a_bundle = b'{"type": "report"}'
    name = SpoolName(BASE_TIME, f"report--{uuid.uuid4()}", sha256_bytes(not_a_bundle))
    publish_bytes(spool.path_in("incoming", relative_path(FEED_C, name)), not_a_bundle)
    # Two pushes refused with 503: two retries, two platform errors.
    opencti_standin.fail("StixBundlePush", status=503, times=2)

    watcher = launch(["watch"], env)
    assert wait_until(
        lambda: all(spool.path_in("done", files.rel(p)).is_file() for p in good), timeout=60
    ), watcher.stderr
    assert wait_until(lambda: any(spool.failed.rglob("*.json")), timeout=30)

    def imported(samples: Samples) -> float:
        return sum(
            value(samples, "ctx_uploader_imports_total", feed=feed, outcome=outcome)
            for feed in (FEED_A, FEED_B, FEED_C)
            for outcome in ("done", "failed")
        )

    # A file is counted just after its move: the last count may trail the file by a moment.
    assert wait_until(lambda: imported(scrape(port)) == 7, timeout=10)
    samples = scrape(port)
    status = json.loads(invoke(["status", "--json"], env).output)
    for feed, by_state in status["feeds"].items():
        for state, tally in by_state.items():
            labels = {"state": state, "feed": feed}
            assert value(samples, "ctx_uploader_spool_files", **labels) == tally["files"], labels
            assert value(samples, "ctx_uploader_spool_bytes", **labels) == tally["bytes"], labels
    assert value(samples, "ctx_uploader_spool_files", state="done", feed=FEED_A) == 2
    assert value(samples, "ctx_uploader_oldest_pending_age_seconds") == 0

    done = sum(
        value(samples, "ctx_uploader_imports_total", feed=feed, outcome="done")
        for feed in (FEED_A, FEED_B, FEED_C)
    )
    assert done == status["states"]["done"]["files"] == 6
    assert value(samples, "ctx_uploader_imports_total", feed=FEED_C, outcome="failed") == 1
    retried = sum(
        value(samples, "ctx_uploader_imports_total", feed=feed, outcome="retried")
        for feed in (FEED_A, FEED_B, FEED_C)
    )
    assert retried == 2
    assert value(samples, "ctx_uploader_pushes_total") == len(opencti_standin.pushes) == 6
    assert value(samples, "ctx_uploader_platform_errors_total", kind="transient") == 2

    # A file waiting in incoming/ shows as pending, with its age, at the next scrape.
    opencti_standin.go_down()
    files.add(FEED_B)
    assert wait_until(
        lambda: (
            value(scrape(port), "ctx_uploader_spool_files", state="incoming", feed=FEED_B)
            + value(scrape(port), "ctx_uploader_spool_files", state="processing", feed=FEED_B)
            == 1
        ),
        timeout=30,
    )
    assert value(scrape(port), "ctx_uploader_oldest_pending_age_seconds") >= 0
    assert wait_until(
        lambda: value(scrape(port), "ctx_uploader_platform_errors_total", kind="unreachable") >= 1,
        timeout=30,
    )
