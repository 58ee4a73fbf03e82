"""Pytest fixtures for the OpenCTI stand-in, the real pycti importer and a private RabbitMQ.

Load them with ``from tests.standins.fixtures import *`` in a conftest, or import the ones a test
module uses. Fixtures:

* ``pycti_env``: removes ``OPENCTI_*``, ``CONNECTOR_*`` and ``MQ_*`` from the environment, because
  pycti reads those before its config dict and a developer's shell would otherwise win.
* ``opencti_standin``: a running :class:`~tests.standins.opencti.OpenCTIStandIn` (token
  :data:`STANDIN_TOKEN`), stopped afterwards.
* ``make_settings``: ``make_settings(standin, **fields)`` → :class:`UploaderSettings` pointing at it.
* ``pycti_importer``: a :class:`uploader.importing.opencti.PyctiImporter` on the stand-in, closed afterwards.
* ``rabbitmq``: a private RabbitMQ node, started once per session on first use.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.standins.opencti import STANDIN_TOKEN, OpenCTIStandIn
from tests.standins.rabbitmq import RabbitMQNode, RabbitMQUnavailableError, available, start_node

__all__ = [
    "STANDIN_TOKEN",
    "make_settings",
    "opencti_standin",
    "pycti_env",
    "pycti_importer",
    "rabbitmq",
]

_PYCTI_ENV_PREFIXES = ("OPENCTI_", "CONNECTOR_", "MQ_")


@pytest.fixture
def pycti_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_PYCTI_ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture
def opencti_standin() -> Iterator[OpenCTIStandIn]:
    with OpenCTIStandIn(STANDIN_TOKEN) as standin:
        yield standin


@pytest.fixture
def make_settings() -> Callable[..., Any]:
    from uploader.settings import UploaderSettings

    def make(standin: OpenCTIStandIn, **fields: Any) -> UploaderSettings:
        values: dict[str, Any] = {
            "opencti_url": standin.url,
            "opencti_token": STANDIN_TOKEN,
            "connector_id": str(uuid.uuid4()),
        }
        values.update(fields)
        return UploaderSettings(**values)

    return make


@pytest.fixture
def pycti_importer(
    pycti_env: None, opencti_standin: OpenCTIStandIn, make_settings: Callable[..., Any]
) -> Iterator[Any]:
    from uploader.importing.opencti import PyctiImporter

    importer = PyctiImporter(make_settings(opencti_standin), work_poll_interval=0.05)
    try:
        yield importer
    finally:
        importer.close()


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    required = os.environ.get("CTX_REQUIRE_RABBITMQ") == "1"
    if not available():
        if required:
            pytest.fail("CTX_REQUIRE_RABBITMQ=1 but rabbitmq-server is not installed")
        pytest.skip("rabbitmq-server is not installed (set CTX_REQUIRE_RABBITMQ=1 to fail instead)")
    try:
        node = start_node(tmp_path_factory.mktemp("rabbitmq"))
    except RabbitMQUnavailableError as exc:
        # Installed but not starting is a real failure, CI or not.
        pytest.fail(f"RabbitMQ did not start: {exc}")
    try:
        yield node
    finally:
        node.stop()
