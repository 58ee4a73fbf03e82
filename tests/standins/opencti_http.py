"""The OpenCTI stand-in's HTTP side: a ``ThreadingHTTPServer`` answering ``POST /graphql`` as the
platform's express server does (body limit from express body-parser, bearer token, TCP_NODELAY),
and the scripted failures (:class:`Fault`) it plays before answering."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.standins.opencti_graphql import data_error, error, parse_request

if TYPE_CHECKING:
    from tests.standins.opencti import OpenCTIStandIn


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


class Server(ThreadingHTTPServer):
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


class Handler(BaseHTTPRequestHandler):
    server: Server
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
                        error(
                            "POST body missing, invalid Content-Type, or JSON object has no keys.",
                            "BAD_REQUEST",
                        )
                    ]
                },
            )
            return
        request = parse_request(body)
        request.applicant_id = self.headers.get("opencti-applicant-id")
        fault = standin.take_fault(request.operation)
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
                    data_error(
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
