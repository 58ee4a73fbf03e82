"""Prometheus metrics: one registry per process and, when asked, an HTTP endpoint serving it.

The switch, the port and its default are pycti's (``CONNECTOR_EXPOSE_METRICS``,
``CONNECTOR_METRICS_PORT`` = 9095 in ``pycti/connector/opencti_connector_helper.py``); pycti's
``OpenCTIMetricHandler`` calls ``prometheus_client.start_http_server(port)``, which binds every
interface, and so does :func:`serve_metrics` unless ``CONNECTOR_METRICS_ADDRESS`` says otherwise.

Each half declares its own metrics on a registry from :func:`new_registry` that its CLI creates
and serves (``fetcher.passes.metrics.PassMetrics``, ``uploader.ops.metrics``), so two commands in one process (tests) never add
to each other's numbers. Counters (``ctx_uploader_imports_total{feed,outcome}``, pushes, platform
errors, retries) are updated where things happen; values that only a look at the spool can give
(files and bytes per state and feed, the age of the oldest pending file) are computed when
Prometheus scrapes, by a :class:`ScrapeGauges` callback over the spool's status.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.config import CommonSettings
from shared.errors import MetricsError

logger = logging.getLogger(__name__)

#: Prefix of every metric of ours: ``ctx_fetcher_*``, ``ctx_uploader_*``.
NAMESPACE = "ctx"

#: ``(label values, value)`` pairs of one gauge family, computed at scrape time.
GaugeSamples = Callable[[], Iterable[tuple[Sequence[str], float]]]


def new_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector metrics prometheus_client
    puts in its default one (memory, CPU, open files: what an operator looks at first)."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP server (prometheus_client's, on a daemon thread)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(settings: CommonSettings, registry: CollectorRegistry) -> MetricsEndpoint | None:
    """Serve ``registry`` when ``CONNECTOR_EXPOSE_METRICS`` is on; None when it is off.

    Raises :class:`MetricsError` when the address cannot be bound (port taken, no such address):
    a monitored process whose metrics silently go nowhere is worse than one that does not start.
    """
    if not settings.expose_metrics:
        return None
    try:
        server, thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_address, registry=registry
        )
    except OSError as exc:
        raise MetricsError(
            f"cannot serve metrics on {settings.metrics_address}:{settings.metrics_port}: "
            f"{exc.strerror or exc}",
            address=settings.metrics_address,
            port=settings.metrics_port,
        ) from None
    endpoint = MetricsEndpoint(server, thread)
    logger.info(
        "metrics endpoint listening",
        extra={"address": endpoint.address, "port": endpoint.port, "path": "/metrics"},
    )
    return endpoint


class ScrapeGauges(Collector):
    """One gauge family whose samples ``samples()`` computes at each scrape.

    For values that are a look at the present state rather than a count of events, e.g.::

        ScrapeGauges(registry, "ctx_uploader_spool_files", "Files per spool state and feed.",
                     ("state", "feed"), lambda: [((s, f), n) for (s, f), n in counts().items()])

    An exception in ``samples`` fails that scrape (prometheus_client answers 500), which an
    alert on ``up`` sees, instead of a stale or zero value that looks healthy.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        documentation: str,
        labels: Sequence[str],
        samples: GaugeSamples,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = list(labels)
        self._samples = samples
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        # Describing without collecting: registering must not call ``samples`` (it may scan).
        yield GaugeMetricFamily(self._name, self._documentation, labels=self._labels)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        for label_values, value in self._samples():
            family.add_metric(list(label_values), value)
        yield family
