"""The metrics endpoint (shared.metrics): off by default, served over real HTTP when on, refuses
a taken port, and scrape-time gauges for values only a look at the spool can give."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from shared.config import CommonSettings, load_settings
from shared.errors import ConfigError, MetricsError
from shared.metrics import ScrapeGauges, new_registry, serve_metrics


def _settings(**env: str) -> CommonSettings:
    return load_settings(CommonSettings, None, {"SPOOL_DIR": "spool", **env})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_defaults_are_pycti_s() -> None:
    settings = _settings()
    assert settings.expose_metrics is False
    assert settings.metrics_port == 9095
    assert settings.metrics_address == "0.0.0.0"
    assert serve_metrics(settings, new_registry()) is None


def test_endpoint_serves_the_registry_over_http(tmp_path: Path) -> None:
    registry = new_registry()
    pushes = Counter("ctx_test_pushes", "Pushes.", ["feed"], registry=registry)
    pushes.labels(feed="f1").inc(3)
    counts = {("incoming", "f1"): 2.0, ("done", "f1"): 5.0}
    calls: list[int] = []

    def spool_files() -> Iterable[tuple[Sequence[str], float]]:
        calls.append(1)
        return list(counts.items())

    ScrapeGauges(
        registry, "ctx_test_spool_files", "Files per state.", ("state", "feed"), spool_files
    )
    assert calls == [], "registering must not scan"
    port = _free_port()
    endpoint = serve_metrics(
        _settings(
            CONNECTOR_EXPOSE_METRICS="true",
            CONNECTOR_METRICS_ADDRESS="127.0.0.1",
            CONNECTOR_METRICS_PORT=str(port),
        ),
        registry,
    )
    assert endpoint is not None
    try:
        assert (endpoint.address, endpoint.port) == ("127.0.0.1", port)
        samples = _scrape(port)
        assert samples[("ctx_test_pushes_total", (("feed", "f1"),))] == 3
        assert samples[("ctx_test_spool_files", (("feed", "f1"), ("state", "done")))] == 5
        counts[("done", "f1")] = 6.0
        assert _scrape(port)[("ctx_test_spool_files", (("feed", "f1"), ("state", "done")))] == 6
        assert len(calls) == 2
    finally:
        endpoint.close()
    with pytest.raises(OSError):
        _scrape(port)


def test_a_taken_port_is_an_error_not_silence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        settings = _settings(
            CONNECTOR_EXPOSE_METRICS="true",
            CONNECTOR_METRICS_ADDRESS="127.0.0.1",
            CONNECTOR_METRICS_PORT=str(port),
        )
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}") as info:
            serve_metrics(settings, new_registry())
    assert info.value.port == port


def test_port_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CONNECTOR_METRICS_PORT"):
        _settings(CONNECTOR_METRICS_PORT="70000")
