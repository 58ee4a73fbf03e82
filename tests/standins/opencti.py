"""A faithful stand-in of the OpenCTI GraphQL API, as much of it as pycti's connector helper uses.

A ``ThreadingHTTPServer`` on 127.0.0.1 answering ``POST /graphql`` with the documents pycti 6.5.10
sends (``health_check`` and ``send_bundle_to_api`` in ``pycti/api/opencti_api_client.py``;
``register``, ``ping`` and ``unregister`` in ``pycti/api/opencti_api_connector.py``;
``initiate_work``, ``to_processed`` and ``get_work`` in ``pycti/api/opencti_api_work.py``; ``read`` in
``pycti/api/opencti_api_connector.py``: the
operations ``healthCheck``, ``RegisterConnector``, ``PingConnector``, ``workAdd``, the ``workEdit``
mutations, ``StixBundlePush``, ``WorkQuery``, ``GetConnector``, ``ConnectorDeletionMutation``), with the fields the
platform's schema gives them (``opencti-platform/opencti-graphql/config/schema/opencti.graphql``),
checking the bearer token, the connector registration and each bundle as the platform does
(``sendStixBundle`` in ``opencti-platform/opencti-graphql/src/domain/stix.js``: ``type`` must be
``bundle``, ``objects`` non-empty, the connector must exist; every refusal wrapped as
``UnsupportedError('Invalid bundle')``). Errors have the platform's 6.x shape: HTTP 200,
``{"errors": [{"message", "extensions": {"code", "data"}}]}``. An unknown operation gets HTTP 400
and a ``GRAPHQL_VALIDATION_FAILED`` error, as Apollo answers a document the schema does not know.
A body over ``max_body_bytes`` gets 413 (express body-parser).

It records every registration, ping, work and push, and can be told to fail: :meth:`fail`
(HTTP status, GraphQL error, delay, dropped connection; for one operation or all; N times),
:meth:`go_down` / :meth:`come_up` (refuse connections, then serve again on the same port).
:meth:`forget_connector` drops a registration, as a restored or replaced platform does.

``tls=`` (an ``ssl.SSLContext`` with the server's certificate) serves HTTPS instead of HTTP.

Standalone for demos: ``python -m tests.standins.opencti --port 8080 --token T``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.standins.opencti_schema import RELEASE_VERSIONS, SchemaValidator

#: ``about { version }`` of a release without an entry in RELEASE_VERSIONS.
PLATFORM_VERSION = "6.5.10"
#: The token the fixtures use (any string of 4+ characters works).
STANDIN_TOKEN = "standin-token-5e1f0c2a9b"
DEFAULT_MAX_BODY_BYTES = 50 * 1024 * 1024

_OPERATION = re.compile(r"\b(query|mutation)\s+(\w+)")
_WORK_EDIT_FIELDS = (
    "toProcessed",
    "toReceived",
    "ping",
    "reportExpectation",
    "addExpectations",
    "addDraftContext",
    "delete",
)


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


@dataclass
class Fault:
    """A scripted failure; ``operation`` None matches every request."""

    operation: str | None
    times: int
    status: int | None = None
    graphql_error: str | None = None
    code: str = "UNKNOWN_ERROR"
    delay: float = 0.0
    drop: bool = False


@dataclass
class _Request:
    operation: str
    root_field: str | None
    query: str
    variables: dict[str, Any]
    applicant_id: str | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _error(message: str, code: str, **data: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, "data": data}}


class OpenCTIStandIn:
    """The stand-in server. Use as a context manager; ``url`` is the platform URL (no /graphql)."""

    def __init__(
        self,
        token: str = "standin-token-0123456789",  # noqa: S107 - a test token
        *,
        port: int = 0,
        amqp: AmqpConfig | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        complete_after_polls: int = 0,
        work_status: str | None = None,
        tls: ssl.SSLContext | None = None,
        platform_version: str | None = None,
        version: str | None = None,
    ) -> None:
        self.token = token
        #: Every request is validated against this OpenCTI release's schema (tests/standins/opencti_schema.py).
        self.schema = SchemaValidator.for_release(platform_version)
        #: What ``about { version }`` answers (``healthCheck``): ``version``, else the release's.
        self.version = version or RELEASE_VERSIONS.get(self.schema.release, PLATFORM_VERSION)
        self.tls = tls
        self.amqp = amqp or AmqpConfig()
        self.max_body_bytes = max_body_bytes
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
        self._faults: list[Fault] = []
        self._applicant: str | None = None
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # life cycle -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._port}"

    def start(self) -> OpenCTIStandIn:
        self.come_up()
        return self

    def stop(self) -> None:
        self.go_down()
        self.schema.raise_if_violated()

    def __enter__(self) -> OpenCTIStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def go_down(self) -> None:
        """Stop serving and close the listening socket: connections are refused until :meth:`come_up`."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()
        if thread is not None:
            thread.join(timeout=10)

    def come_up(self) -> None:
        """Serve again, on the same port as before (or a free one the first time)."""
        if self._server is not None:
            return
        server = _Server(("127.0.0.1", self._port), _Handler)
        if self.tls is not None:
            # The handshake runs in accept(): one the client refuses is an OSError there, which
            # socketserver drops quietly (the client sees its own certificate error).
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        server.standin = self
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"opencti-standin-{self._port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    # fault injection --------------------------------------------------------------------------

    def fail(
        self,
        operation: str | None = None,
        *,
        times: int = 1,
        status: int | None = None,
        graphql_error: str | None = None,
        code: str = "UNKNOWN_ERROR",
        delay: float = 0.0,
        drop: bool = False,
    ) -> None:
        """Make the next ``times`` requests of ``operation`` (e.g. ``StixBundlePush``; None: any) fail.

        ``status``: answer that HTTP status (502/503 with a proxy-like text body, 429, 413...).
        ``graphql_error``: answer HTTP 200 with that GraphQL error message and ``code``.
        ``drop``: close the connection without an answer. ``delay``: wait first (alone: a slow
        answer that then succeeds).
        """
        with self.lock:
            self._faults.append(Fault(operation, times, status, graphql_error, code, delay, drop))

    def slow(self, seconds: float, operation: str | None = None, *, times: int = 1) -> None:
        """Answer the next ``times`` requests of ``operation`` after ``seconds``."""
        self.fail(operation, times=times, delay=seconds)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def _take_fault(self, operation: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.operation in (None, operation) and fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

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

    # GraphQL ----------------------------------------------------------------------------------

    def answer(self, request: _Request, authorised: bool) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body for one parsed request."""
        violation = self.schema.check(request.operation, request.query, request.variables)
        if violation is not None:
            return self.schema.answer(violation)
        handler = _RESOLVERS.get(request.operation)
        if handler is None:
            return 400, {
                "errors": [
                    _error(
                        f'Unknown operation "{request.operation}" (root field {request.root_field!r}) in the stand-in schema',
                        "GRAPHQL_VALIDATION_FAILED",
                    )
                ]
            }
        if not authorised:
            with self.lock:
                self.auth_failures += 1
            # The platform resolves every field behind @auth: HTTP 200, AUTH_REQUIRED.
            return 200, {
                "errors": [
                    _error(
                        "You must be logged in to do this.",
                        "AUTH_REQUIRED",
                        http_status=401,
                        genre="TECHNICAL",
                    )
                ],
                "data": None,
            }
        with self.lock:
            self._applicant = request.applicant_id
            return 200, handler(self, request.variables, request.query)

    def _health(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        return {"data": {"about": {"version": self.version}}}

    def _register(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        data = dict(variables.get("input") or {})
        connector_id = str(data.get("id"))
        self.registrations.append(data)
        existing = self.connectors.get(connector_id, {})
        state = existing.get("connector_state")
        self.connectors[connector_id] = {**data, "connector_state": state}
        a = self.amqp
        return {
            "data": {
                "registerConnector": {
                    "id": connector_id,
                    "connector_state": state,
                    # 7.x: the platform's public JWKS (pycti 7 reads it at start; a key set with no
                    # key is enough for a connector that never listens).
                    "jwks": '{"keys": []}',
                    "config": {
                        "connection": {
                            "host": a.host,
                            "vhost": a.vhost,
                            "use_ssl": a.use_ssl,
                            "port": a.port,
                            "user": a.user,
                            "pass": a.password,
                        },
                        # 6.9+: the platform's own S3 settings (pycti 6.9+ reads them at start).
                        "s3": {
                            "endpoint": "minio",
                            "port": 9000,
                            "use_ssl": False,
                            "bucket_name": "opencti-bucket",
                            "bucket_region": "us-east-1",
                            "access_key": "standin-access",
                            "secret_key": "standin-secret",
                        },
                        "listen": f"listen_{connector_id}",
                        "listen_routing": f"listen_routing_{connector_id}",
                        "listen_exchange": a.listen_exchange,
                        "push": f"push_{connector_id}",
                        "push_routing": f"push_routing_{connector_id}",
                        "push_exchange": a.push_exchange,
                    },
                    "connector_user_id": self.connector_user_id,
                }
            }
        }

    def _ping(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        connector_id = str(variables.get("id"))
        connector = self.connectors.get(connector_id)
        if connector is None:
            # pingConnector in opencti-graphql src/domain/connector.js.
            return _data_error(
                "pingConnector",
                "No connector found with the specified ID",
                "FUNCTIONAL_ERROR",
                http_status=400,
                genre="BUSINESS",
                id=connector_id,
            )
        self.pings.append(dict(variables))
        connector["connector_state"] = variables.get("state")
        connector["connector_info"] = variables.get("connectorInfo")
        return {
            "data": {
                "pingConnector": {
                    "id": connector_id,
                    "connector_state": connector["connector_state"],
                    "connector_info": connector["connector_info"],
                }
            }
        }

    def _work_add(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        connector_id = str(variables.get("connectorId"))
        if connector_id not in self.connectors:
            # The workAdd resolver (opencti-graphql src/resolvers/connector.js) reads
            # ``connector(...).id`` without checking: an unknown connector is a TypeError, which
            # Apollo Server answers as an INTERNAL_SERVER_ERROR carrying the TypeError's text.
            return _data_error(
                "workAdd", "Cannot read properties of null (reading 'id')", "INTERNAL_SERVER_ERROR"
            )
        work = Work(
            id=f"work_{connector_id}_{uuid.uuid4()}",
            connector_id=connector_id,
            name=variables.get("friendlyName"),
            timestamp=_now(),
        )
        self.works[work.id] = work
        return {"data": {"workAdd": {"id": work.id}}}

    def _work_edit(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        work_id = str(variables.get("id") or variables.get("workId"))
        work = self.works.get(work_id)
        action = next((f for f in _WORK_EDIT_FIELDS if re.search(rf"\b{f}\b", query)), None)
        if work is None:
            return _data_error("workEdit", "Work not found", "FUNCTIONAL_ERROR", id=work_id)
        result: Any = work_id
        if action == "toProcessed":
            work.processed = True
            work.in_error = bool(variables.get("inError"))
            work.processed_time = _now()
            work.messages.append({"timestamp": _now(), "message": variables.get("message")})
            if work.in_error:
                work.errors.append({"timestamp": _now(), "message": variables.get("message")})
        elif action == "toReceived":
            work.received_time = _now()
            work.status = "progress"
        elif action == "addExpectations":
            work.expectations += int(variables.get("expectations") or 0)
        elif action == "reportExpectation":
            if variables.get("error"):
                work.errors.append(dict(variables["error"]))
        elif action == "delete":
            del self.works[work_id]
        return {"data": {"workEdit": {action or "unknown": result}}}

    def _push(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        connector_id = str(variables.get("connectorId"))
        work_id = variables.get("work_id")
        text = variables.get("bundle")
        cause: str | None = None
        bundle: Any = None
        try:
            bundle = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            cause = "Unexpected token in JSON"
        if cause is None and (
            not isinstance(bundle, dict)
            or bundle.get("type") != "bundle"
            or not isinstance(bundle.get("objects"), list)
            or not bundle["objects"]
        ):
            cause = "Invalid stix bundle"
        if cause is None and connector_id not in self.connectors:
            cause = "Invalid connector"
        if cause is not None:
            self.rejected_pushes.append(
                {"connector_id": connector_id, "work_id": work_id, "cause": cause}
            )
            # sendStixBundle wraps every failure: UnsupportedError('Invalid bundle', { cause }).
            return _data_error(
                "stixBundlePush",
                "Invalid bundle",
                "UNSUPPORTED_ERROR",
                http_status=500,
                genre="BUSINESS",
                cause=cause,
            )
        assert isinstance(bundle, dict)
        if not work_id:
            # Like sendStixBundle: a push without a work gets one of its own.
            name = self.connectors[connector_id].get("name")
            work_id = self._work_add(
                {"connectorId": connector_id, "friendlyName": f"{name} run @ {_now()}"}, ""
            )["data"]["workAdd"]["id"]
        self.pushes.append(Push(connector_id, work_id, bundle, len(text or ""), self._applicant))
        work = self.works.get(str(work_id)) if work_id else None
        if work is not None:
            work.pushed_objects += len(bundle["objects"])
            if work.status == "wait":
                work.status = "progress"
            self._worker_errors(work, bundle["objects"])
        return {"data": {"stixBundlePush": True}}

    def _worker_errors(self, work: Work, objects: list[Any]) -> None:
        """What the platform's workers report on a work for the objects they fail to import.

        A worker that fails an item calls ``workEdit(id).reportExpectation(error: {error, source})``
        and the platform appends ``{timestamp, message: error, source}`` to the work's ``errors``
        (``reportExpectation`` in opencti-graphql ``src/domain/work.js``; ``errors: [WorkMessage]``,
        ``WorkMessage { timestamp, message, sequence, source }`` in ``config/schema/opencti.graphql``).
        The worker's ``source`` is the item it was importing, as JSON.
        """
        for obj in objects:
            message = (
                self.refused_objects.get(str(obj.get("id"))) if isinstance(obj, dict) else None
            )
            if message is not None:
                work.errors.append(
                    {"timestamp": _now(), "message": message, "source": json.dumps(obj)}
                )

    def _work_query(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        work = self.works.get(str(variables.get("id")))
        if work is None:
            return {"data": {"work": None}}
        work.polls += 1
        if self.work_status is not None:
            status = self.work_status
        elif work.processed and work.polls > self.complete_after_polls:
            status = "complete"
        else:
            status = work.status
        done = status == "complete"
        expected = work.pushed_objects or work.expectations
        return {
            "data": {
                "work": {
                    "id": work.id,
                    "name": work.name,
                    "user": {"name": "[C] connector"},
                    "timestamp": work.timestamp,
                    "status": status,
                    "event_source_id": work.connector_id,
                    "received_time": work.received_time,
                    "processed_time": work.processed_time,
                    "completed_time": _now() if done else None,
                    "tracking": {
                        "import_expected_number": expected,
                        "import_processed_number": expected if done else 0,
                    },
                    "messages": [_work_message(m) for m in work.messages],
                    "errors": [_work_message(m) for m in work.errors],
                }
            }
        }

    def _connector(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        """``connector(id)``, as pycti's ``api.connector.read`` asks it.

        ``connector_queue_details`` is the platform's ``queueDetails(cn.id)``
        (opencti-graphql ``src/resolvers/connector.js``), which reads the connector's push queue
        from RabbitMQ's management API (``getConnectorQueueDetails`` in
        ``src/database/rabbitmq.js``): ``messages_number`` = the queue's ``messages``,
        ``messages_size`` = its ``message_bytes``. Here both are what :meth:`set_queue_size` set.
        """
        connector_id = str(variables.get("id"))
        connector = self.connectors.get(connector_id)
        if connector is None:
            return {"data": {"connector": None}}
        self.queue_reads += 1
        a = self.amqp
        return {
            "data": {
                "connector": {
                    "id": connector_id,
                    "name": connector.get("name"),
                    "active": True,
                    "auto": bool(connector.get("auto")),
                    "only_contextual": bool(connector.get("only_contextual")),
                    "connector_type": connector.get("type"),
                    "connector_scope": connector.get("scope") or [],
                    "connector_state": connector.get("connector_state"),
                    "connector_queue_details": {
                        "messages_number": self.queue_messages,
                        "messages_size": self.queue_bytes,
                    },
                    "updated_at": _now(),
                    "created_at": _now(),
                    "config": {
                        "listen": f"listen_{connector_id}",
                        "listen_exchange": a.listen_exchange,
                        "push": f"push_{connector_id}",
                        "push_exchange": a.push_exchange,
                        "push_routing": f"push_routing_{connector_id}",
                    },
                    "built_in": False,
                }
            }
        }

    def _delete_connector(self, variables: dict[str, Any], query: str) -> dict[str, Any]:
        connector_id = str(variables.get("id"))
        self.deleted_connectors.append(connector_id)
        self.connectors.pop(connector_id, None)
        for work_id in [w.id for w in self.works.values() if w.connector_id == connector_id]:
            del self.works[work_id]
        return {"data": {"deleteConnector": connector_id}}


def _work_message(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": m.get("timestamp"),
        "message": m.get("message"),
        "sequence": m.get("sequence"),
        "source": m.get("source"),
    }


def _data_error(root: str, message: str, code: str, **data: Any) -> dict[str, Any]:
    return {"errors": [{**_error(message, code, **data), "path": [root]}], "data": {root: None}}


_RESOLVERS = {
    "healthCheck": OpenCTIStandIn._health,
    "RegisterConnector": OpenCTIStandIn._register,
    "PingConnector": OpenCTIStandIn._ping,
    "workAdd": OpenCTIStandIn._work_add,
    "workToProcessed": OpenCTIStandIn._work_edit,
    "workToReceived": OpenCTIStandIn._work_edit,
    "pingWork": OpenCTIStandIn._work_edit,
    "reportExpectation": OpenCTIStandIn._work_edit,
    "addExpectations": OpenCTIStandIn._work_edit,
    "addDraftContext": OpenCTIStandIn._work_edit,
    "ConnectorWorksMutation": OpenCTIStandIn._work_edit,
    "StixBundlePush": OpenCTIStandIn._push,
    "WorkQuery": OpenCTIStandIn._work_query,
    "ConnectorDeletionMutation": OpenCTIStandIn._delete_connector,
    "GetConnector": OpenCTIStandIn._connector,
}


def parse_request(body: dict[str, Any]) -> _Request:
    """Operation name (``query X``/``mutation X``) and first root field of a GraphQL request."""
    query = str(body.get("query") or "")
    match = _OPERATION.search(query)
    operation = str(body.get("operationName") or (match.group(2) if match else "anonymous"))
    start = query.find("{", match.end() if match else 0)
    root = re.match(r"\s*(\w+)", query[start + 1 :]) if start >= 0 else None
    variables = body.get("variables") or {}
    return _Request(operation, root.group(1) if root else None, query, dict(variables))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: OpenCTIStandIn

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Cut kept-alive connections too: a platform that is down answers nothing."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waited for the client's
    # delayed ACK of the headers: 40 ms added to every request on a kept-alive connection (found
    # by make bench). The platform's node server sets TCP_NODELAY too.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send_text(404, "Cannot GET")

    def do_POST(self) -> None:
        standin = self.server.standin
        if self.path.split("?")[0].rstrip("/") != "/graphql":
            self._send_text(404, f"Cannot POST {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > standin.max_body_bytes:
            # express/body-parser answers 413 from Content-Length; the body is drained so the
            # client reads the answer instead of a broken pipe.
            remaining = length
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
            self.close_connection = True
            self._send_text(413, "PayloadTooLargeError: request entity too large")
            return
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._send_json(
                400,
                {
                    "errors": [
                        _error(
                            "POST body missing, invalid Content-Type, or JSON object has no keys.",
                            "BAD_REQUEST",
                        )
                    ]
                },
            )
            return
        request = parse_request(body)
        request.applicant_id = self.headers.get("opencti-applicant-id")
        fault = standin._take_fault(request.operation)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            if fault.status is not None:
                self._send_text(fault.status, _status_text(fault.status))
                return
            if fault.graphql_error is not None:
                self._send_json(
                    200,
                    _data_error(
                        request.root_field or request.operation, fault.graphql_error, fault.code
                    ),
                )
                return
        variables = {k: v for k, v in request.variables.items() if k != "bundle"}
        with standin.lock:
            standin.requests.append((request.operation, variables))
        authorised = self.headers.get("Authorization") == f"Bearer {standin.token}"
        status, answer = standin.answer(request, authorised)
        self._send_json(status, answer)

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _status_text(status: int) -> str:
    reasons = {
        429: "Too Many Requests",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
        413: "PayloadTooLargeError: request entity too large",
    }
    reason = reasons.get(status, "Error")
    return f"<html><head><title>{status} {reason}</title></head><body><center><h1>{status} {reason}</h1></center></body></html>"


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[OpenCTIStandIn]:
    """``with running(token=...) as standin:`` — a started stand-in, stopped at the end."""
    with OpenCTIStandIn(**kwargs) as standin:
        yield standin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenCTI GraphQL stand-in (tests and demos).")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--token", required=True)
    parser.add_argument("--amqp-host", default="127.0.0.1")
    parser.add_argument("--amqp-port", type=int, default=5672)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    args = parser.parse_args(argv)
    standin = OpenCTIStandIn(
        args.token,
        port=args.port,
        amqp=AmqpConfig(host=args.amqp_host, port=args.amqp_port),
        max_body_bytes=args.max_body_bytes,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with standin:
        sys.stdout.write(f"{standin.url}\n")
        sys.stdout.flush()
        try:
            while not stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        sys.stdout.write(
            f"pushes={len(standin.pushes)} objects={len(standin.objects())} works={len(standin.works)}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
