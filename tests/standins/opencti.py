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

Where each part lives: the HTTP server and its faults :mod:`tests.standins.opencti_http`; request
parsing and error shapes :mod:`tests.standins.opencti_graphql`; the resolvers
:mod:`tests.standins.opencti_connectors` and :mod:`tests.standins.opencti_works`; what the platform
holds and records :mod:`tests.standins.opencti_state`; schema validation
:mod:`tests.standins.opencti_schema`.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any

from tests.standins import opencti_connectors as connectors
from tests.standins import opencti_works as works
from tests.standins.opencti_graphql import Request, error
from tests.standins.opencti_http import Fault, Handler, Server
from tests.standins.opencti_schema import RELEASE_VERSIONS, SchemaValidator
from tests.standins.opencti_state import AmqpConfig, PlatformState

#: ``about { version }`` of a release without an entry in RELEASE_VERSIONS.
PLATFORM_VERSION = "6.5.10"
#: The token the fixtures use (any string of 4+ characters works).
STANDIN_TOKEN = "standin-token-5e1f0c2a9b"
DEFAULT_MAX_BODY_BYTES = 50 * 1024 * 1024

_RESOLVERS: dict[str, Callable[[PlatformState, dict[str, Any], str], dict[str, Any]]] = {
    "healthCheck": connectors.health,
    "RegisterConnector": connectors.register,
    "PingConnector": connectors.ping,
    "workAdd": works.work_add,
    "workToProcessed": works.work_edit,
    "workToReceived": works.work_edit,
    "pingWork": works.work_edit,
    "reportExpectation": works.work_edit,
    "addExpectations": works.work_edit,
    "addDraftContext": works.work_edit,
    "ConnectorWorksMutation": works.work_edit,
    "StixBundlePush": works.push,
    "WorkQuery": works.work_query,
    "ConnectorDeletionMutation": connectors.delete_connector,
    "GetConnector": connectors.connector,
}


class OpenCTIStandIn(PlatformState):
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
        schema = SchemaValidator.for_release(platform_version)
        super().__init__(
            # What ``about { version }`` answers (``healthCheck``): ``version``, else the release's.
            version=version or RELEASE_VERSIONS.get(schema.release, PLATFORM_VERSION),
            amqp=amqp,
            complete_after_polls=complete_after_polls,
            work_status=work_status,
        )
        self.token = token
        #: Every request is validated against this OpenCTI release's schema (tests/standins/opencti_schema.py).
        self.schema = schema
        self.tls = tls
        self.max_body_bytes = max_body_bytes
        self._faults: list[Fault] = []
        self._port = port
        self._server: Server | None = None
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
        server = Server(("127.0.0.1", self._port), Handler)
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

    def take_fault(self, operation: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.operation in (None, operation) and fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # GraphQL ----------------------------------------------------------------------------------

    def answer(self, request: Request, authorised: bool) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body for one parsed request."""
        violation = self.schema.check(request.operation, request.query, request.variables)
        if violation is not None:
            return self.schema.answer(violation)
        handler = _RESOLVERS.get(request.operation)
        if handler is None:
            return 400, {
                "errors": [
                    error(
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
                    error(
                        "You must be logged in to do this.",
                        "AUTH_REQUIRED",
                        http_status=401,
                        genre="TECHNICAL",
                    )
                ],
                "data": None,
            }
        with self.lock:
            self.applicant = request.applicant_id
            return 200, handler(self, request.variables, request.query)


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
