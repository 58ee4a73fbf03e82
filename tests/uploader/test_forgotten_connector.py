"""A platform that forgot the connector: the uploader registers it again and goes on."""

from __future__ import annotations

import json
import logging
import signal
import threading
import uuid
from typing import Any

import pytest

from shared.layout import Spool
from tests.standins.opencti import OpenCTIStandIn
from tests.standins.opencti_state import AmqpConfig
from tests.uploader.conftest import FEED_A, FEED_B, FEED_C, UPLOADER, SpoolFiles, wait_until

pytest_plugins = ["tests.standins.fixtures"]

pycti = pytest.importorskip("pycti")

from uploader.importing.chunking import Bundle, read_bundle  # noqa: E402
from uploader.importing.classify import names_unknown_connector  # noqa: E402
from uploader.importing.opencti import PyctiImporter  # noqa: E402

REGISTERED_AGAIN = "registered it again"


def _bundle(files: SpoolFiles, seed: str) -> Bundle:
    return read_bundle(files.bundle_bytes(seed, n=2), 50 * 1024 * 1024)


def test_the_standin_answers_a_forgotten_connector_as_the_platform_does(
    pycti_importer: PyctiImporter,
    opencti_standin: OpenCTIStandIn,
    files: SpoolFiles,
    pycti_helpers: list[Any],
) -> None:
    pycti_importer.connect()
    api = pycti_helpers[0].api
    assert opencti_standin.forget_connector() == [pycti_importer.connector_id]

    with pytest.raises(ValueError) as push:
        api.send_bundle_to_api(
            connector_id=pycti_importer.connector_id, bundle=files.bundle_bytes("x").decode()
        )
    with pytest.raises(ValueError) as ping:
        # connectorInfo as pycti's PingAlive sends it (required fields of ConnectorInfoInput).
        info = {
            "run_and_terminate": False,
            "buffering": False,
            "queue_threshold": 500.0,
            "queue_messages_size": 0.0,
        }
        api.connector.ping(pycti_importer.connector_id, None, info)
    with pytest.raises(ValueError) as work:
        api.work.initiate_work(pycti_importer.connector_id, "w")

    assert "Invalid bundle" in str(push.value)
    if "cause" in push.value.args[0]:
        # pycti 7 passes the error's data on; 6.x keeps only "Invalid bundle".
        assert names_unknown_connector(push.value)
    assert names_unknown_connector(ping.value)
    # workAdd's answer names nothing: the importer has to ask connector(id).
    assert not names_unknown_connector(work.value)
    assert api.connector.read(connector_id=pycti_importer.connector_id) is None


def test_import_after_the_platform_forgot_registers_once_and_imports(
    pycti_importer: PyctiImporter,
    opencti_standin: OpenCTIStandIn,
    files: SpoolFiles,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = pycti_importer.import_bundle("first", _bundle(files, "a"))
    assert len(opencti_standin.registrations) == 1
    opencti_standin.forget_connector()
    caplog.set_level(logging.WARNING, logger="uploader.importing.reregistration")

    second = pycti_importer.import_bundle("second", _bundle(files, "b"))
    third = pycti_importer.import_bundle("third", _bundle(files, "c"))

    assert len(opencti_standin.registrations) == 2
    assert pycti_importer.connector_id in opencti_standin.connectors
    assert len({first.work_id, second.work_id, third.work_id}) == 3
    assert opencti_standin.pushes_for(second.work_id) and opencti_standin.pushes_for(third.work_id)
    warnings = [r for r in caplog.records if REGISTERED_AGAIN in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


def test_forgotten_between_the_work_and_the_push(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn, files: SpoolFiles
) -> None:
    pycti_importer.connect()
    # The push waits a moment before it is answered: the platform forgets the connector meanwhile.
    opencti_standin.slow(0.5, "StixBundlePush")
    receipts: list[Any] = []
    importing = threading.Thread(
        target=lambda: receipts.append(pycti_importer.import_bundle("w", _bundle(files, "a")))
    )
    importing.start()
    assert opencti_standin.wait_for(lambda: len(opencti_standin.works) == 1)
    opencti_standin.forget_connector()
    importing.join(30)

    assert receipts, "the import did not return"
    assert opencti_standin.rejected_pushes[-1]["cause"] == "Invalid connector"
    assert len(opencti_standin.registrations) == 2
    assert opencti_standin.pushes_for(receipts[0].work_id)


def test_a_second_forgetting_registers_again(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn, files: SpoolFiles
) -> None:
    for seed in ("a", "b", "c"):
        opencti_standin.forget_connector()
        receipt = pycti_importer.import_bundle(seed, _bundle(files, seed))
        assert opencti_standin.pushes_for(receipt.work_id)
    # The first import registered through the helper's constructor, each other one again.
    assert len(opencti_standin.registrations) == 3


def test_an_idle_probe_finds_the_connector_forgotten_and_registers_it(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    assert pycti_importer.probe()
    assert len(opencti_standin.registrations) == 1
    opencti_standin.forget_connector()

    assert pycti_importer.probe()
    assert len(opencti_standin.registrations) == 2
    assert pycti_importer.connector_id in opencti_standin.connectors
    assert pycti_importer.probe()
    assert len(opencti_standin.registrations) == 2


def test_a_probe_of_a_platform_that_is_down_or_refuses_the_token_is_no_answer(
    pycti_importer: PyctiImporter, opencti_standin: OpenCTIStandIn
) -> None:
    assert pycti_importer.probe()
    answered = pycti_importer.last_answer
    opencti_standin.token = "another-token-entirely"
    assert not pycti_importer.probe()
    opencti_standin.go_down()
    assert not pycti_importer.probe()
    assert pycti_importer.last_answer == answered


def test_watch_imports_everything_after_the_platform_forgot_the_connector(
    spool: Spool,
    files: SpoolFiles,
    opencti_standin: OpenCTIStandIn,
    uploader_env: dict[str, str],
    launch: Any,
) -> None:
    if not UPLOADER.exists():
        pytest.skip("ctx-uploader is not installed")
    first = files.add(FEED_A)
    watcher = launch(["watch"], uploader_env)
    assert wait_until(lambda: spool.path_in("done", files.rel(first)).is_file(), timeout=60), (
        watcher.stderr
    )
    opencti_standin.forget_connector()
    later = [files.add(feed) for feed in (FEED_A, FEED_B, FEED_C) for _ in range(2)]

    assert wait_until(
        lambda: all(spool.path_in("done", files.rel(p)).is_file() for p in later), timeout=60
    ), watcher.stderr
    watcher.proc.send_signal(signal.SIGTERM)
    code, out = watcher.finish(timeout=60)

    assert code == 0, watcher.stderr
    assert "done 7" in out
    warnings = [line for line in watcher.stderr.splitlines() if REGISTERED_AGAIN in line]
    assert warnings and all(" WARNING " in line for line in warnings), watcher.stderr
    # One registration at start, then one per warning (threads meeting the same answer share it).
    assert len(opencti_standin.registrations) == 1 + len(warnings)
    assert uploader_env["CONNECTOR_ID"] in opencti_standin.connectors
    assert not list(spool.failed.rglob("*.json"))


@pytest.mark.rabbitmq
def test_amqp_import_after_the_platform_forgot_registers_and_publishes(
    pycti_env: None,
    rabbitmq: Any,
    make_settings: Any,
    files: SpoolFiles,
) -> None:
    pika = pytest.importorskip("pika")
    exchange = f"ctxtest.worker.{uuid.uuid4().hex[:8]}"
    amqp = AmqpConfig(
        host=rabbitmq.host,
        port=rabbitmq.port,
        user=rabbitmq.user,
        password=rabbitmq.password,
        push_exchange=exchange,
    )
    connector_id = str(uuid.uuid4())
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            host=rabbitmq.host,
            port=rabbitmq.port,
            credentials=pika.PlainCredentials(rabbitmq.user, rabbitmq.password),
        )
    )
    channel = connection.channel()
    # What the platform declares for a registered connector (as in test_opencti_amqp).
    channel.exchange_declare(exchange=exchange, exchange_type="direct", durable=True)
    queue = f"push_{connector_id}"
    channel.queue_declare(queue=queue, durable=True)
    channel.queue_bind(queue=queue, exchange=exchange, routing_key=f"push_routing_{connector_id}")
    try:
        with OpenCTIStandIn("amqp-token-0002", amqp=amqp) as standin:
            settings = make_settings(
                standin,
                opencti_token="amqp-token-0002",
                connector_id=connector_id,
                queue_protocol="amqp",
            )
            with PyctiImporter(settings) as importer:
                importer.import_bundle("first", _bundle(files, "a"))
                standin.forget_connector()
                second = importer.import_bundle("second", _bundle(files, "b"))
            assert len(standin.registrations) == 2
        work_ids = set()
        while True:
            method, _properties, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is None:
                break
            work_ids.add(json.loads(body)["work_id"])
        assert second.work_id in work_ids
    finally:
        connection.close()
