"""What the OpenCTI stand-in's platform holds (connectors, works, its queue) and records of what
reached it (registrations, pings, pushes, requests): the state tests assert on and script, read
and changed by the resolvers of :mod:`tests.standins.opencti_connectors` and ``opencti_works``."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AmqpConfig:
    """What ``registerConnector`` tells the connector about RabbitMQ (the platform's names)."""

    host: str = "rabbitmq"
    port: int = 5672
    vhost: str = "/"
    use_ssl: bool = False
    user: str = "guest"
    password: str = "guest"
    push_exchange: str = "amqp.worker.exchange"
    listen_exchange: str = "amqp.connector.exchange"


@dataclass
class Push:
    """One accepted ``stixBundlePush``."""

    connector_id: str
    work_id: str | None
    bundle: dict[str, Any]
    size: int
    #: The user the push was made as: the ``opencti-applicant-id`` header (pycti's
    #: ``OpenCTIApiClient.set_applicant_id_header``; opencti-graphql takes it as the applicant of
    #: an impersonating request), None without it.
    applicant_id: str | None = None


@dataclass
class Work:
    """One work, as ``workAdd`` created it and the ``workEdit`` mutations changed it."""

    id: str
    connector_id: str
    name: str | None
    status: str = "wait"
    messages: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    expectations: int = 0
    pushed_objects: int = 0
    processed: bool = False
    in_error: bool = False
    polls: int = 0
    received_time: str | None = None
    processed_time: str | None = None
    timestamp: str = ""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class PlatformState:
    """The platform's side of the stand-in; every change happens under ``lock``."""

    def __init__(
        self,
        *,
        version: str,
        amqp: AmqpConfig | None,
        complete_after_polls: int,
        work_status: str | None,
    ) -> None:
        #: What ``about { version }`` answers (``healthCheck``).
        self.version = version
        self.amqp = amqp or AmqpConfig()
        #: ``work(id)`` answers ``complete`` for a processed work after this many polls.
        self.complete_after_polls = complete_after_polls
        #: When set, ``work(id)`` always answers this status (e.g. ``progress`` to force a timeout).
        self.work_status = work_status
        self.connector_user_id = str(uuid.uuid4())
        self.lock = threading.RLock()
        self.registrations: list[dict[str, Any]] = []
        self.connectors: dict[str, dict[str, Any]] = {}
        self.pings: list[dict[str, Any]] = []
        self.works: dict[str, Work] = {}
        self.pushes: list[Push] = []
        self.rejected_pushes: list[dict[str, Any]] = []
        self.deleted_connectors: list[str] = []
        #: Every request as ``(operation, variables)``; bundle texts are left out.
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.auth_failures = 0
        #: ``connector_queue_details.messages_size`` reported for every connector, in bytes
        #: (:meth:`set_queue_size`), and how often it was asked.
        self.queue_bytes = 0
        self.queue_messages = 0
        self.queue_reads = 0
        #: Object ids whose import the "workers" report as an error on the work (:meth:`refuse_object`).
        self.refused_objects: dict[str, str] = {}
        #: The ``opencti-applicant-id`` of the request being answered.
        self.applicant: str | None = None

    # the platform's queue and workers ------------------------------------------------------------

    def set_queue_size(self, size_bytes: int, messages: int | None = None) -> None:
        """Report this size (bytes) as every connector's queue (``connector_queue_details``)."""
        with self.lock:
            self.queue_bytes = size_bytes
            self.queue_messages = messages if messages is not None else (1 if size_bytes else 0)

    def forget_connector(self, connector_id: str | None = None) -> list[str]:
        """Forget ``connector_id`` (every connector when None) and its works, as a platform does
        whose database was restored from before the registration, whose connector was deleted in
        the UI, or that is a new platform behind the same URL. From then on the connector's pings,
        works and pushes are refused as the platform refuses an unknown connector, until it
        registers again. Returns the ids forgotten."""
        with self.lock:
            ids = list(self.connectors) if connector_id is None else [connector_id]
            for cid in ids:
                self.connectors.pop(cid, None)
                for work_id in [w.id for w in self.works.values() if w.connector_id == cid]:
                    del self.works[work_id]
            return ids

    def refuse_object(self, object_id: str, message: str) -> None:
        """Make the "workers" fail the import of ``object_id``: each push holding it adds an
        error to its work, as a worker's ``reportExpectation(error:)`` does."""
        with self.lock:
            self.refused_objects[object_id] = message

    # what reached "OpenCTI" -------------------------------------------------------------------

    def objects(self) -> list[dict[str, Any]]:
        """Every object of every accepted push, in push order."""
        with self.lock:
            return [obj for push in self.pushes for obj in push.bundle["objects"]]

    def object_ids(self) -> set[str]:
        return {str(obj["id"]) for obj in self.objects()}

    def operations(self) -> list[str]:
        with self.lock:
            return [op for op, _ in self.requests]

    def pushes_for(self, work_id: str) -> list[Push]:
        with self.lock:
            return [p for p in self.pushes if p.work_id == work_id]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        """Poll ``predicate()`` until true or ``timeout``: for a background client (ping thread)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return bool(predicate())
