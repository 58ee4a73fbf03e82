"""The ``amqp`` queue protocol: pycti publishes to a real RabbitMQ; the messages are read back."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from tests.standins.opencti import OpenCTIStandIn
from tests.standins.opencti_state import AmqpConfig
from tests.standins.rabbitmq import RabbitMQNode
from uploader.importing.chunking import read_bundle
from uploader.importing.opencti import PyctiImporter
from uploader.spool_ops.origin import Origin, SourceConnector

pytestmark = pytest.mark.rabbitmq

# The shared fixtures; constants come from tests.standins.opencti so this module is imported
# by pytest as a plugin first (importing it directly would defeat assertion rewriting).
pytest_plugins = ["tests.standins.fixtures"]


@pytest.fixture
def amqp_standin(rabbitmq: RabbitMQNode) -> Iterator[OpenCTIStandIn]:
    exchange = f"ctxtest.worker.{uuid.uuid4().hex[:8]}"
    amqp = AmqpConfig(
        host=rabbitmq.host,
        port=rabbitmq.port,
        user=rabbitmq.user,
        password=rabbitmq.password,
        push_exchange=exchange,
    )
    with OpenCTIStandIn("amqp-token-0001", amqp=amqp) as standin:
        yield standin


@pytest.fixture
def channel(rabbitmq: RabbitMQNode) -> Iterator[Any]:
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host=rabbitmq.host,
            port=rabbitmq.port,
            credentials=pika.PlainCredentials(rabbitmq.user, rabbitmq.password),
        )
    )
    try:
        yield connection.channel()
    finally:
        connection.close()


def _drain(channel: Any, queue: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        method, _properties, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            return messages
        messages.append(json.loads(body))


def test_amqp_push_reaches_rabbitmq_with_the_work_id(
    pycti_env: None,
    amqp_standin: OpenCTIStandIn,
    channel: Any,
    make_settings: Callable[..., Any],
) -> None:
    connector_id = str(uuid.uuid4())
    exchange = amqp_standin.amqp.push_exchange
    # What the platform declares for a registered connector: a direct exchange, the push queue
    # bound with the connector's routing key.
    channel.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
    queue = f"push_{connector_id}"
    channel.queue_declare(queue=queue, durable=True)
    channel.queue_bind(queue=queue, exchange=exchange, routing_key=f"push_routing_{connector_id}")
    objects = [
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": f"identity--{uuid.uuid4()}",
            "created": "2026-01-01T00:00:00.000Z",
            "modified": "2026-01-01T00:00:00.000Z",
            "name": f"org {i}",
        }
        for i in range(3)
    ]
    data = json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects})
    settings = make_settings(
        amqp_standin,
        opencti_token="amqp-token-0001",
        connector_id=connector_id,
        queue_protocol="amqp",
    )

    with PyctiImporter(settings) as importer:
        receipt = importer.import_bundle("amqp work", read_bundle(data.encode(), 1 << 20))

    messages = _drain(channel, queue)
    assert messages
    assert {m["work_id"] for m in messages} == {receipt.work_id}
    assert {m["bundle_type"] for m in messages} == {"QUEUE_BUNDLE"}
    assert {m["applicant_id"] for m in messages} == {amqp_standin.connector_user_id}
    received = [
        obj for m in messages for obj in json.loads(base64.b64decode(m["content"]))["objects"]
    ]
    assert sorted(o["id"] for o in received) == sorted(o["id"] for o in objects)
    assert not amqp_standin.pushes  # nothing went through the GraphQL push
    work = amqp_standin.works[receipt.work_id]
    assert work.expectations == len(messages)  # pycti's addExpectations before publishing
    assert work.processed


def test_an_adopted_diode_file_is_published_to_its_source_connectors_queue(
    pycti_env: None,
    amqp_standin: OpenCTIStandIn,
    channel: Any,
    make_settings: Callable[..., Any],
    pycti_helpers: list[Any],
) -> None:
    ours = str(uuid.uuid4())
    source = SourceConnector(str(uuid.uuid4()), "Upstream Feed", "EXTERNAL_IMPORT", "identity")
    exchange = amqp_standin.amqp.push_exchange
    channel.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
    queues = {}
    for connector_id in (ours, source.id):
        queues[connector_id] = f"push_{connector_id}"
        channel.queue_declare(queue=queues[connector_id], durable=True)
        channel.queue_bind(
            queue=queues[connector_id],
            exchange=exchange,
            routing_key=f"push_routing_{connector_id}",
        )
    upstream_user, target_user = str(uuid.uuid4()), str(uuid.uuid4())
    objects = [
        {
            "type": "identity",
            "spec_version": "2.1",
            "id": f"identity--{uuid.uuid4()}",
            "created": "2026-01-01T00:00:00.000Z",
            "modified": "2026-01-01T00:00:00.000Z",
            "name": "org",
        }
    ]
    data = json.dumps({"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects})
    settings = make_settings(
        amqp_standin,
        opencti_token="amqp-token-0001",
        connector_id=ours,
        queue_protocol="amqp",
        applicant_mappings=f"{upstream_user}:{target_user}",
    )
    origin = Origin("upstream_feed-x.json", source, applicant_id=upstream_user, update=False)

    with PyctiImporter(settings) as importer:
        receipt = importer.import_bundle("diode", read_bundle(data.encode(), 1 << 20), origin)
        [helper] = pycti_helpers
        # The helper is ours again after the push.
        assert helper.connect_id == ours and helper.applicant_id == amqp_standin.connector_user_id

    messages = _drain(channel, queues[source.id])
    assert messages and not _drain(channel, queues[ours])
    assert {m["applicant_id"] for m in messages} == {target_user}
    assert {m["update"] for m in messages} == {False}
    assert receipt.connector_id == source.id
    assert amqp_standin.works[receipt.work_id].connector_id == source.id
    assert amqp_standin.connectors[source.id]["name"] == "Upstream Feed"
