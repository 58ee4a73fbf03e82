"""``ctx-fetcher`` watched as an operator would, against the CTX stand-in: JSON log lines of a
real ``once`` process, and the Prometheus endpoint scraped over HTTP after ``once`` (in-process,
so the endpoint outlives the command) and during a real ``run`` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import fetcher.commands.loading
from shared.config import CommonSettings
from shared.layout import walk_bundles
from shared.metrics import MetricsEndpoint, serve_metrics
from tests.fetcher.helpers import invoke
from tests.standins.ctx import CTXStandIn

FETCHER = Path(sys.executable).parent / "ctx-fetcher"


def _process_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("CYBERTHREATEXCHANGE_", "SPOOL_"))
    }
    return {**base, **env, **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spool_files(spool_dir: Path) -> Counter[str]:
    return Counter(entry.relative.parts[0] for entry in walk_bundles(spool_dir / "incoming"))


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_once_writes_one_json_object_per_stderr_line(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    # A dropped connection: urllib3's own "Retrying" warning must be a JSON line too.
    standin.inject("drop", path_contains="subscriptions", times=1)
    proc = subprocess.run(
        [str(FETCHER), "once"],
        env=_process_env(env, OPENCTI_JSON_LOGGING="true"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert lines, "no log lines at all"
    records = [json.loads(line) for line in lines]
    for record in records:
        assert isinstance(record, dict)
        assert {"timestamp", "level", "logger", "message"} <= record.keys(), record
    assert any(r["logger"].startswith("urllib3") and "Retrying" in r["message"] for r in records)
    written = [r for r in records if r["message"] == "report bundle written"]
    assert written
    assert all(r["file"].startswith(r["feed_id"] + "/") for r in written)
    done = [r for r in records if r["message"].startswith("feed done")]
    assert sorted(r["feed_id"] for r in done) == sorted(standin.active_feed_ids)
    assert standin.api_key not in proc.stderr + proc.stdout
    assert sum(_spool_files(spool_dir).values()) > 0


def test_metrics_endpoint_matches_what_the_pass_did(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path
) -> None:
    standin.inject("status", path_contains="subscriptions", status=429, retry_after="0", times=2)
    port = _free_port()
    started = time.time()
    proc = subprocess.Popen(
        [str(FETCHER), "run", "--interval-seconds", "3600"],
        env=_process_env(
            env,
            CONNECTOR_EXPOSE_METRICS="true",
            CONNECTOR_METRICS_ADDRESS="127.0.0.1",
            CONNECTOR_METRICS_PORT=str(port),
            CONNECTOR_LOG_LEVEL="info",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    feeds = standin.active_feed_ids
    try:
        deadline = time.monotonic() + 120
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                samples = _scrape(port)
            except OSError:
                samples = {}
            passes = [
                ("ctx_fetcher_feed_passes_total", (("feed", f), ("result", "ok"))) for f in feeds
            ]
            if all(samples.get(key) == 1 for key in passes):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the pass did not finish in time")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    on_disk = _spool_files(spool_dir)
    summaries = {line.split(":", 1)[0]: line for line in out.splitlines() if ": records" in line}
    for feed in feeds:
        written = value("ctx_fetcher_files_written_total", feed=feed, kind="report") + value(
            "ctx_fetcher_files_written_total", feed=feed, kind="objects"
        )
        assert written == on_disk[feed] > 0
        records = int(value("ctx_fetcher_records_total", feed=feed))
        assert f"records listed {records} " in summaries[feed]
        assert records > 0
        assert (
            started <= value("ctx_fetcher_last_success_timestamp_seconds", feed=feed) <= time.time()
        )
    assert set(on_disk) == set(feeds)
    retries = sum(v for (name, _), v in samples.items() if name == "ctx_fetcher_retries_total")
    requests = sum(v for (name, _), v in samples.items() if name == "ctx_fetcher_requests_total")
    assert value("ctx_fetcher_retries_total", reason="429") == retries == 2
    assert value("ctx_fetcher_rate_limited_total") == 2
    # Every request the stand-in saw ended either in a retry or in an answer the client kept.
    assert requests + retries == len(standin.requests)
    assert value("ctx_fetcher_requests_total", status="200") == requests
    # The process collectors are there too: what an operator looks at first.
    assert value("process_resident_memory_bytes") > 0


def test_metrics_scraped_after_once_match_the_spool(
    standin: CTXStandIn, env: dict[str, str], spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process, so the endpoint outlives the command; the real serve_metrics runs, the test
    # only keeps its handle to close it afterwards.
    endpoints: list[MetricsEndpoint] = []

    def serve(settings: CommonSettings, registry: CollectorRegistry) -> MetricsEndpoint | None:
        endpoint = serve_metrics(settings, registry)
        assert endpoint is not None
        endpoints.append(endpoint)
        return endpoint

    monkeypatch.setattr(fetcher.commands.loading, "serve_metrics", serve)
    port = _free_port()
    result = invoke(
        ["once"],
        {
            **env,
            "CONNECTOR_EXPOSE_METRICS": "true",
            "CONNECTOR_METRICS_ADDRESS": "127.0.0.1",
            "CONNECTOR_METRICS_PORT": str(port),
        },
    )
    assert result.exit_code == 0, result.output
    try:
        samples = _scrape(port)
    finally:
        for endpoint in endpoints:
            endpoint.close()
    on_disk = _spool_files(spool_dir)
    for feed in standin.active_feed_ids:
        files = sum(
            v
            for (name, labels), v in samples.items()
            if name == "ctx_fetcher_files_written_total" and ("feed", feed) in labels
        )
        assert files == on_disk[feed] > 0
        assert samples[("ctx_fetcher_feed_passes_total", (("feed", feed), ("result", "ok")))] == 1
    requests = sum(v for (name, _), v in samples.items() if name == "ctx_fetcher_requests_total")
    assert requests == len(standin.requests)
