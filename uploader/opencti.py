"""The real :class:`uploader.importer.Importer`: one spool file → one OpenCTI work, through pycti.

This is the only module that imports pycti, and the CLI imports it only for commands that import:
pycti must match the platform's version and needs libmagic (``pycti/api/opencti_api_client.py``
imports ``magic``), so the other commands work without it. Per file it follows the diode-import
connector's sequence (``DiodeImport._process_bundle`` in OpenCTI-Platform/connectors
``external-import/diode-import/src/diode_import.py``): ``initiate_work`` →
``send_stix2_bundle(work_id=...)`` (once per chunk when the file is larger than
``max_push_bytes``; its api-protocol core, see below) → ``to_processed``.

Where pycti is adapted, and why:

* ``OpenCTIConnectorHelper.__init__`` replaces ``sys.excepthook`` with a hook that SIGTERMs the
  process; the previous hook is put back right after construction, so an uncaught error in our
  threads is reported, not turned into a silent kill of the uploader.
* ``OpenCTIApiClient`` calls ``logging.basicConfig(force=True)`` from its constructor, which would
  throw away the CLI's redacting handler; the root logger's handlers and level are restored after the
  helper is built.
* ``helper.stop()`` is never called: it sends ``deleteConnector``, which deletes the connector's
  works on the platform. :meth:`PyctiImporter.close` only stops the ping thread.
* The ping thread (``PingAlive``) is a daemon thread and no other thread is started for an
  ``EXTERNAL_IMPORT`` connector that never calls ``listen()`` (metrics are off unless
  ``CONNECTOR_EXPOSE_METRICS`` is set), so a CLI process exits normally; ``close()`` still stops the
  ping loop so the last ping is not sent mid-shutdown.
* pycti's health check swallows the platform's answer (a wrong token looks like "not reachable"), so
  :meth:`PyctiImporter.connect` asks ``about{version}`` itself first to tell a wrong token
  (:class:`PlatformAuthError`) from a platform that is down or starting (:class:`TransientImportError`).
* pycti turns a non-200 answer into ``ValueError(body)`` and loses the status code; a response hook
  on pycti's session (and :class:`GraphQLTransport` for the per-file calls) remembers the last status
  per thread so 413/429/5xx are classified by code.
* In the ``api`` protocol ``send_stix2_bundle`` runs pycti's splitter only to count expectations and
  to refuse a bundle with nothing importable, then pushes the text unchanged with
  ``api.send_bundle_to_api``. :func:`split_bundle` makes the same importability check, so the
  uploader calls ``send_bundle_to_api`` itself and saves the splitter's parse and copies (several
  times the file in memory, and CPU on every file). ``amqp`` still goes through
  ``send_stix2_bundle``, whose split is what gets published.
* The three calls made for every file (``initiate_work``, the push, ``to_processed``) are the same
  GraphQL documents sent on the same pooled connections, but without requests' per-call session
  machinery (:class:`GraphQLTransport`): it cost more CPU than the spool bookkeeping of a small
  file. Registration, pings, marking a work in error and polling a work stay with pycti.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import requests
import urllib3
from pycti import OpenCTIConnectorHelper
from pycti.utils.opencti_stix2_splitter import is_id_supported
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool
from urllib3.util import Timeout

from uploader.check import BundleLayout, BundleScan, bundle_layout, scan_bundle
from uploader.errors import (
    BundleRejected,
    ImportFailure,
    PermanentImportError,
    PlatformAuthError,
    TransientImportError,
)
from uploader.importer import ImportReceipt
from uploader.settings import UploaderSettings

logger = logging.getLogger(__name__)

#: Bytes kept free in every push for the GraphQL document and variables around the bundle.
PUSH_ENVELOPE_BYTES = 4096

#: Seconds allowed for our own health probe (pycti's own requests use a fixed 300 s timeout).
PROBE_TIMEOUT = 30.0

#: Seconds between two ``work(id)`` polls when waiting for a work to complete.
WORK_POLL_INTERVAL = 2.0

_HEALTH_QUERY = "query healthCheck { about { version } }"

# pycti reads these environment variables *before* its config dict, and treats an empty one
# (``CONNECTOR_QUEUE_PROTOCOL=`` in a compose file) as unset, falling back to its own default
# (amqp!). Our settings already resolved env-over-config.yml with the same names, so while the
# helper is built they are hidden and the config dict is authoritative. ``MQ_*`` stay visible:
# they are pycti's documented RabbitMQ overrides and have no setting of ours.
_PYCTI_ENV_SHADOWED = (
    "OPENCTI_URL",
    "OPENCTI_TOKEN",
    "OPENCTI_SSL_VERIFY",
    "OPENCTI_JSON_LOGGING",
    "CONNECTOR_ID",
    "CONNECTOR_TYPE",
    "CONNECTOR_NAME",
    "CONNECTOR_SCOPE",
    "CONNECTOR_LOG_LEVEL",
    "CONNECTOR_QUEUE_PROTOCOL",
    "QUEUE_PROTOCOL",
    "CONNECTOR_RUN_AND_TERMINATE",
    "CONNECTOR_VALIDATE_BEFORE_IMPORT",
    "CONNECTOR_SEND_TO_DIRECTORY",
    "CONNECTOR_SEND_TO_QUEUE",
    # Our own endpoint (shared.metrics) serves these: pycti's would bind the same port.
    "CONNECTOR_EXPOSE_METRICS",
    "CONNECTOR_METRICS_PORT",
)

# Text fragments of pycti/platform errors, checked in this order (first match wins). Auth comes first:
# "Invalid connector" is wrapped by the platform in "Invalid bundle" when it gives the cause.
_AUTH_MARKERS = (
    "you must be logged in",
    "auth_required",
    "authrequired",
    "authfailure",
    "auth_failure",
    "you are not allowed",
    "forbidden",
    "invalid connector",
    "a token must be set",
)
_TRANSIENT_MARKERS = (
    "not reachable",
    "starting",
    "econnrefused",
    "connection refused",
    "timeout",
    "timed out",
    "too many requests",
    "rate limit",
    "lock timeout",
    "lockerror",
    "databaseerror",
    "database error",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
    "temporarily",
)
_PERMANENT_MARKERS = (
    "invalid bundle",
    "invalid stix bundle",
    "nothing to import",
    "not a valid json",
    "not a valid bundle",
    "unsupported",
    "functionalerror",
    "validationerror",
    "validation error",
    "too large",
    "payloadtoolarge",
)

# Objects that others refer to go first, containers last, so that a split bundle's early pushes
# carry what the later ones reference (the platform's workers retry missing refs, but less is better).
_TYPE_RANK = {
    "marking-definition": 0,
    "extension-definition": 0,
    "language-content": 0,
    "identity": 1,
    "relationship": 3,
    "sighting": 3,
    "report": 4,
    "grouping": 4,
    "note": 4,
    "opinion": 4,
    "observed-data": 4,
}


class PyctiImporter:
    """Imports spool bundles into OpenCTI as the registered ``EXTERNAL_IMPORT`` connector.

    Build it with ``PyctiImporter(settings)``; nothing touches the network until :meth:`connect`
    or the first :meth:`import_bundle` (which connects when needed, so a platform that is down at
    start-up is a :class:`TransientImportError` of the first file, not a crash).

    Errors: :class:`TransientImportError` (platform down or starting, connection refused, timeout,
    429, 5xx, work not completed within ``work_timeout``), :class:`PlatformAuthError` (wrong token,
    missing capability, unknown connector), :class:`PermanentImportError` (the platform refused the
    bundle, or the bytes are not a non-empty STIX bundle, or one object alone is over
    ``max_push_bytes``). ``work_id`` is set on the error when a work had been created.
    """

    def __init__(
        self,
        settings: UploaderSettings,
        *,
        work_poll_interval: float = WORK_POLL_INTERVAL,
    ) -> None:
        self._settings = settings
        self._work_poll_interval = work_poll_interval
        self._helper: Any = None
        self._calls: GraphQLTransport | None = None
        # Guards building the helper (registration, env shadowing, logging restore) and its
        # teardown. Imports run without it, one per feed thread at a time (issue 6): the calls we
        # make pass work_id explicitly and read no per-call helper state (work_id, draft_id and
        # the request headers are only changed by listen()/playbook paths we never use), each
        # send_stix2_bundle builds its own splitter (and, for amqp, its own pika connection), and
        # pycti itself already shares helper.api's requests.Session between its ping thread and
        # the caller. The session's connection pool is sized to the feed threads. make bench: a
        # lock around every import kept two feeds at 0.58x the throughput of a bare pycti loop.
        self._lock = threading.RLock()
        self._status = threading.local()
        self._closed = threading.Event()

    @property
    def connector_id(self) -> str:
        return self._settings.connector_id

    @property
    def helper(self) -> Any:
        """The pycti helper once connected (for tests and diagnostics), else ``None``."""
        return self._helper

    def connect(self) -> None:
        """Register the connector with OpenCTI (once); safe to call again after a failure."""
        with self._lock:
            if self._helper is None:
                helper = self._create_helper()
                self._calls = GraphQLTransport(helper.api, self._record_status)
                self._helper = helper

    def close(self) -> None:
        """Stop pinging the platform. Never unregisters the connector (that deletes its works)."""
        self._closed.set()
        with self._lock:
            helper = self._helper
        ping = getattr(helper, "ping", None)
        if ping is not None:
            ping.stop()

    def __enter__(self) -> PyctiImporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def import_bundle(self, work_name: str, bundle: bytes) -> ImportReceipt:
        """Import ``bundle`` under one new work; see :class:`uploader.importer.Importer`."""
        chunks, objects = split_bundle(bundle, self._settings.max_push_bytes)
        self._status.code = None
        self.connect()
        helper, calls = self._helper, self._calls
        assert calls is not None  # set with the helper
        work_id: str | None = None
        try:
            work_id = calls.work_add(helper.connect_id, work_name)
            if not chunks:
                # Every object is of a type OpenCTI does not import (a feed-level file of
                # extension definitions, say): pycti would raise "Nothing to import" and the file
                # would be failed although nothing is wrong with it. The work says so instead.
                calls.to_processed(
                    work_id,
                    f"ctx-uploader: none of the {objects} objects is of a type OpenCTI imports",
                )
                logger.warning(
                    "no object of this file is of a type OpenCTI imports",
                    extra={"work_id": work_id, "objects": objects},
                )
                return ImportReceipt(
                    work_id=str(work_id), connector_id=self.connector_id, pushes=0, objects=objects
                )
            for chunk in chunks:
                if self._settings.queue_protocol == "api":
                    # What send_stix2_bundle does in the api protocol, minus its splitter: that
                    # only counts and refuses chunks with nothing importable (checked already by
                    # split_bundle) and parses and copies the whole bundle again, several times
                    # the file in memory and CPU on every file.
                    calls.push(helper.connector_id, chunk, work_id)
                    continue
                helper.send_stix2_bundle(
                    chunk.decode("utf-8"),
                    work_id=work_id,
                    # The spool holds the newest version of each object, so it may overwrite
                    # the platform's copy (send_stix2_bundle's ``update``: "whether to update
                    # data in the database"). The api path has no such flag: the platform's
                    # sendStixBundle (opencti-graphql src/domain/stix.js, 6.x) queues its bundle
                    # with update: true.
                    update=True,
                    cleanup_inconsistent_bundle=False,
                )
            calls.to_processed(
                work_id,
                f"ctx-uploader: {objects} objects in {len(chunks)} push(es)",
            )
        except Exception as exc:  # pycti raises bare Exception/ValueError: classified here
            failure = self._classify(exc, work_id)
            if work_id is not None and not _unreachable(exc):
                self._mark_in_error(work_id, failure)
            raise failure from exc
        logger.info(
            "bundle pushed to OpenCTI",
            extra={"work_id": work_id, "pushes": len(chunks), "objects": objects},
        )
        if self._settings.wait_for_work:
            self._wait_for_work(str(work_id))
        return ImportReceipt(
            work_id=str(work_id),
            connector_id=self.connector_id,
            pushes=len(chunks),
            objects=objects,
        )

    def _pycti_config(self) -> dict[str, dict[str, Any]]:
        s = self._settings
        return {
            "opencti": {
                "url": s.opencti_url,
                "token": s.opencti_token.get_secret_value(),
                # pycti's default is False: always pass ours (default True).
                "ssl_verify": s.opencti_ssl_verify,
                # Plain records through the CLI's redacting handler, not pycti's JSON handler.
                "json_logging": False,
            },
            "connector": {
                "id": s.connector_id,
                "type": "EXTERNAL_IMPORT",
                "name": s.connector_name,
                "scope": s.connector_scope,
                "log_level": "warning" if s.log_level == "warn" else s.log_level,
                "queue_protocol": s.queue_protocol,
                "run_and_terminate": False,
                # No workbench/draft detour and no copy to a directory: straight to the queue.
                "validate_before_import": False,
                "send_to_queue": True,
                "send_to_directory": False,
            },
        }

    def _probe(self) -> str:
        """Ask ``about{version}`` ourselves: pycti's health check hides why it failed."""
        s = self._settings
        try:
            response = requests.post(
                f"{s.opencti_url}/graphql",
                json={"query": _HEALTH_QUERY, "variables": {}},
                headers={"Authorization": f"Bearer {s.opencti_token.get_secret_value()}"},
                verify=s.opencti_ssl_verify,
                timeout=PROBE_TIMEOUT,
            )
        except requests.RequestException as exc:
            raise TransientImportError(
                f"OpenCTI at {s.opencti_url} is not reachable: {type(exc).__name__}"
            ) from None
        if response.status_code in (401, 403):
            raise PlatformAuthError(
                f"OpenCTI refused the token (HTTP {response.status_code}); check OPENCTI_TOKEN"
            )
        if response.status_code != 200:
            raise TransientImportError(
                f"OpenCTI at {s.opencti_url} answered HTTP {response.status_code} (starting or down?)"
            )
        try:
            body = response.json()
        except ValueError:
            raise TransientImportError(
                f"OpenCTI at {s.opencti_url} answered something that is not JSON"
            ) from None
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            text = json.dumps(errors)
            if _matches(text.lower(), _AUTH_MARKERS):
                raise PlatformAuthError(
                    "OpenCTI refused the token (AUTH_REQUIRED); check OPENCTI_TOKEN and that its user has the CONNECTORAPI capability"
                )
            raise TransientImportError(f"OpenCTI health check failed: {text[:300]}")
        version = str(((body.get("data") or {}).get("about") or {}).get("version", "unknown"))
        return version

    def _create_helper(self) -> Any:
        version = self._probe()
        root = logging.getLogger()
        saved_handlers, saved_level = list(root.handlers), root.level
        saved_levels = {name: logging.getLogger(name).level for name in ("urllib3", "pika")}
        saved_hook = sys.excepthook
        try:
            with _shadowed_env(_PYCTI_ENV_SHADOWED):
                helper = OpenCTIConnectorHelper(self._pycti_config())
        except Exception as exc:  # noqa: BLE001 - pycti raises ValueError/requests errors/KeyError
            raise self._classify(exc, None) from None
        finally:
            # pycti's hook SIGTERMs the whole process on any uncaught exception
            # (``killProgramHook``, set by ``OpenCTIConnectorHelper.__init__`` in
            # pycti/connector/opencti_connector_helper.py):
            # the uploader must survive a bad file or a dead thread, so the previous hook returns.
            sys.excepthook = saved_hook
            # pycti's logger() calls basicConfig(force=True) and would drop our redacting handler.
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
        _resolve_environment_once(helper.api)
        helper.api.session.hooks["response"].append(self._remember_status)
        # One kept-alive connection per feed thread, plus the ping thread (requests' default
        # pool of 10 would drop connections above UPLOADER_CONCURRENCY=9).
        adapter = HTTPAdapter(pool_maxsize=max(10, self._settings.concurrency + 2))
        helper.api.session.mount("http://", adapter)
        helper.api.session.mount("https://", adapter)
        logger.info(
            "connector registered with OpenCTI",
            extra={
                "connector_id": helper.connect_id,
                "platform_version": version,
                "queue_protocol": self._settings.queue_protocol,
            },
        )
        return helper

    def _remember_status(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._record_status(response.status_code)

    def _record_status(self, code: int) -> None:
        self._status.code = code

    def _last_status(self) -> int | None:
        code = getattr(self._status, "code", None)
        return code if isinstance(code, int) else None

    def _classify(self, exc: BaseException, work_id: str | None) -> ImportFailure:
        """Map what pycti raised to our error tree, without the token in the text.

        ``OpenCTIApiClient.query`` (``pycti/api/opencti_api_client.py``) raises ``ValueError`` both
        for a GraphQL error in a 200 answer and for a non-200 answer (the body), so the status code
        and the text decide, not the class.
        """
        if isinstance(exc, ImportFailure):
            if work_id is not None and exc.work_id is None:
                exc.work_id = work_id
            return exc
        text = self._redact(_describe(exc))
        if isinstance(exc, requests.RequestException) or _unreachable(exc):
            return TransientImportError(f"OpenCTI not reachable: {text}", work_id=work_id)
        if type(exc).__module__.startswith("pika"):
            return TransientImportError(f"RabbitMQ push failed: {text}", work_id=work_id)
        status = self._last_status()
        # pycti raises ValueError(r.text) for a non-200 answer: the hook knows the code.
        if (
            isinstance(exc, ValueError)
            and exc.args
            and isinstance(exc.args[0], str)
            and status not in (None, 200)
        ):
            return _by_status(int(status or 0), text, work_id)
        lowered = text.lower()
        if _matches(lowered, _AUTH_MARKERS):
            return PlatformAuthError(f"OpenCTI refused the connector: {text}", work_id=work_id)
        if _matches(lowered, _TRANSIENT_MARKERS):
            return TransientImportError(f"OpenCTI is not ready: {text}", work_id=work_id)
        if _matches(lowered, _PERMANENT_MARKERS):
            return PermanentImportError(f"OpenCTI refused the bundle: {text}", work_id=work_id)
        # Unknown: keep the file pending rather than risk failing good data (a transient failure
        # is retried; a permanent one sends the file to failed/ for good).
        return TransientImportError(f"OpenCTI import failed: {text}", work_id=work_id)

    def _redact(self, text: str) -> str:
        token = self._settings.opencti_token.get_secret_value()
        return text.replace(token, "***") if token else text

    def _mark_in_error(self, work_id: str, failure: ImportFailure) -> None:
        try:
            self._helper.api.work.to_processed(work_id, str(failure)[:500], in_error=True)
        except Exception as exc:  # noqa: BLE001 - best effort: the failure itself is what matters
            logger.warning(
                "could not mark the work in error",
                extra={"work_id": work_id, "reason": self._redact(_describe(exc))[:200]},
            )

    def _wait_for_work(self, work_id: str) -> None:
        deadline = time.monotonic() + self._settings.work_timeout
        status = "unknown"
        while True:
            try:
                work = self._helper.api.work.get_work(work_id)
            except Exception as exc:  # classified like any pycti failure
                raise self._classify(exc, work_id) from exc
            status = str((work or {}).get("status", "unknown"))
            if status == "complete":
                errors = (work or {}).get("errors") or []
                if errors:
                    logger.warning(
                        "OpenCTI completed the work with errors",
                        extra={"work_id": work_id, "errors": len(errors)},
                    )
                return
            if time.monotonic() >= deadline or self._closed.is_set():
                break
            self._closed.wait(min(self._work_poll_interval, max(0.0, deadline - time.monotonic())))
        raise TransientImportError(
            f"work {work_id} not complete after {self._settings.work_timeout:g} s (status {status})",
            work_id=work_id,
        )


def _resolve_environment_once(api: Any) -> None:
    """Read the proxy and CA-bundle variables once, at start-up, instead of on every request.

    With ``trust_env`` on, requests looks up ``*_PROXY``/``NO_PROXY`` (decoding the whole
    environment), ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` and ``~/.netrc`` on every call: about a
    quarter of the uploader's CPU per file (three pycti calls per file; issue 6, make bench). The
    answer cannot change for the one OpenCTI URL, so it is resolved here and the session stops
    looking. ``~/.netrc`` is dropped on purpose: pycti authenticates with its bearer header, which
    a netrc entry for the host would have replaced.
    """
    session: requests.Session = api.session
    resolved = session.merge_environment_settings(api.api_url, {}, None, api.ssl_verify, None)
    session.proxies.update(resolved["proxies"])
    # True becomes the CA bundle the environment names (if any); False stays False.
    api.ssl_verify = resolved["verify"]
    session.trust_env = False


@contextlib.contextmanager
def _shadowed_env(names: tuple[str, ...]) -> Iterator[None]:
    # os.environ is process-wide: this runs under the importer's lock and only for the helper's
    # constructor; nothing else in the uploader reads these variables after start-up.
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def split_bundle(data: bytes, max_push_bytes: int) -> tuple[Sequence[bytes], int]:
    """The bundle as one or more bundle texts (UTF-8), each under ``max_push_bytes`` once in a push.

    Returns ``(bundle_texts, number_of_objects)``. A bundle that fits is sent as the file's exact
    bytes, checked one object at a time (:func:`uploader.check.scan_bundle`: a 40 MB file is never
    held parsed, issue 6); a bigger one is cut into whole objects (referenced objects first,
    containers last), each chunk a ``{type, id, objects}`` bundle of the objects' own bytes from
    the file. The cut is planned from where each object is in the file
    (:func:`uploader.check.bundle_layout`) and each chunk is built when it is sent, so a split file
    costs its bytes and one chunk in memory, not its parsed objects and every chunk. Nothing is
    dropped: one object alone over the limit is a :class:`PermanentImportError`. A chunk holding
    only objects of types pycti does not import (``extension-definition``, unknown custom types)
    is not sent, because pycti refuses it with "Nothing to import" (pycti drops such objects from
    any push anyway). So no text at all means the file has nothing OpenCTI imports.
    """
    budget = max_push_bytes - PUSH_ENVELOPE_BYTES
    if pushed_size_of(data) <= budget:
        scan = _usable(data)
        if not any(is_id_supported(ident) for ident in scan.ids):
            return [], scan.objects
        return [data], scan.objects
    # One pass checks the file and finds where each object is.
    layout = bundle_layout(data)
    if layout is None:
        # Refused (the refusal is scan_bundle's), or a file the streaming reader leaves to the
        # parser (a repeated "objects" key, say).
        _usable(data)
        data, layout = _reserialised(data)
    if not any(is_id_supported(ident) for _, _, _, ident in layout.spans):
        return [], len(layout.spans)
    bundle_id = layout.bundle_id or f"bundle--{uuid.uuid4()}"
    head = _pushed_size(json.dumps({"type": "bundle", "id": bundle_id, "objects": []}))
    groups: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    size = head
    current_importable = False
    for start, end, _kind, ident in sorted(layout.spans, key=lambda span: _rank_of(span[2])):
        obj_size = pushed_size_of(data[start:end]) + 1
        if head + obj_size > budget:
            raise PermanentImportError(
                f"object {ident} alone is {obj_size} bytes, over UPLOADER_MAX_PUSH_BYTES={max_push_bytes}"
            )
        if current and size + obj_size > budget:
            if current_importable:
                groups.append(current)
            current, size, current_importable = [], head, False
        current.append((start, end))
        size += obj_size
        # pycti's splitter keeps only the types OpenCTI imports (its ``is_id_supported``).
        current_importable = current_importable or bool(is_id_supported(ident))
    if current and current_importable:
        groups.append(current)
    return _Chunks(data, bundle_id, groups), len(layout.spans)


def _usable(data: bytes) -> BundleScan:
    """:func:`uploader.check.scan_bundle`, its refusal as a :class:`PermanentImportError`."""
    try:
        return scan_bundle(data)
    except BundleRejected as exc:
        raise PermanentImportError(f"not a usable STIX bundle: {exc}") from None


class _Chunks(Sequence[bytes]):
    """The chunks of a split file, each built from the file's bytes when it is asked for."""

    def __init__(self, data: bytes, bundle_id: str, groups: list[list[tuple[int, int]]]) -> None:
        self._data = data
        self._bundle_id = bundle_id
        self._groups = groups

    def __len__(self) -> int:
        return len(self._groups)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        group = self._groups[index]
        index = index % len(self._groups)
        view = memoryview(self._data)  # the objects are joined straight from the file's bytes
        return _chunk_bytes(self._bundle_id, index, [view[start:end] for start, end in group])


def _reserialised(data: bytes) -> tuple[bytes, BundleLayout]:
    """The objects of a bundle parsed whole, laid end to end as compact JSON, and their layout."""
    parsed = _parse_bundle(data)
    pieces: list[bytes] = []
    spans: list[tuple[int, int, str, str]] = []
    offset = 0
    for obj in parsed["objects"]:
        piece = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        spans.append((offset, offset + len(piece), str(obj.get("type")), obj["id"]))
        pieces.append(piece)
        offset += len(piece)
    bundle_id = parsed.get("id")
    return b"".join(pieces), BundleLayout(bundle_id if isinstance(bundle_id, str) else None, spans)


#: pycti's ``send_bundle_to_api`` mutation, word for word (pycti 6.5.10 to 6.8).
PUSH_MUTATION = (
    "mutation StixBundlePush($connectorId: String!, $bundle: String!, $work_id: String) {"
    " stixBundlePush(connectorId: $connectorId, bundle: $bundle, work_id: $work_id) }"
)
#: Bodies up to this size are built in memory; bigger ones are streamed (:class:`PushBody`).
STREAM_PUSH_BYTES = 1 << 20
#: pycti's own timeout for every request (``query``).
PUSH_TIMEOUT = 300


#: pycti's ``initiate_work`` and ``to_processed`` mutations (pycti 6.5.10 to 6.8), whitespace
#: aside: the platform sees the same operations whichever way they are sent.
WORK_ADD_MUTATION = (
    "mutation workAdd($connectorId: String!, $friendlyName: String) {"
    " workAdd(connectorId: $connectorId, friendlyName: $friendlyName) { id } }"
)
WORK_TO_PROCESSED_MUTATION = (
    "mutation workToProcessed($id: ID!, $message: String, $inError: Boolean) {"
    " workEdit(id: $id) { toProcessed(message: $message, inError: $inError) } }"
)


class GraphQLTransport:
    """The calls made for every file, sent on pycti's connection pool without ``Session.post``.

    Per small file the uploader makes three calls (``workAdd``, ``stixBundlePush``,
    ``workEdit.toProcessed``). Through ``api.query`` each cost about 0.46 ms of the uploader's
    CPU, most of it in requests' per-call machinery (merging settings and headers, preparing the
    request, hooks, cookies, a ``Response``), more than all the spool bookkeeping of the file
    (issue 6, make bench). This class makes the same calls the way ``HTTPAdapter.send`` does
    underneath: the urllib3 pool the session's adapter picks for the API URL with pycti's TLS
    verification, client certificate and proxy (so the same kept-alive connections), the headers
    the session would send (pycti's ``request_headers`` over the session's), pycti's 300 s timeout,
    no redirects (a redirect is an error naming the new address), the adapter's retry policy.
    About 0.27 ms per call (1,500 ``workAdd`` calls against the stand-in, make bench notes).

    Answers are read as pycti's ``query`` reads them: a status other than 200 raises
    ``ValueError(body text)``, a GraphQL error raises ``ValueError({name, error_message, ...})``;
    transport failures raise the ``requests`` exception ``Session.post`` would have raised
    (``ConnectionError``, ``SSLError``, ``ProxyError``, ``Timeout``), so errors are classified
    exactly as before. The session's proxy and CA settings must be final when this is built
    (:func:`_resolve_environment_once`); the session has no ``auth`` (pycti sets none for us).
    """

    def __init__(self, api: Any, on_status: Callable[[int], None] | None = None) -> None:
        session: requests.Session = api.session
        if session.auth is not None:
            raise ValueError("the session authenticates itself: use its post()")
        self._api = api
        self._on_status = on_status
        self._probe = requests.Request("POST", api.api_url).prepare()
        adapter = session.get_adapter(api.api_url)
        if not isinstance(adapter, HTTPAdapter):
            raise ValueError(f"the session sends {api.api_url} through {type(adapter).__name__}")
        self._adapter = adapter
        # What Session.request merges for every call (trust_env is off by now): the call's
        # settings over the session's, None values dropped.
        proxies = {**session.proxies, **(api.proxies or {})}
        self._proxies = {scheme: url for scheme, url in proxies.items() if url is not None}
        self._verify = api.ssl_verify
        self._cert = api.cert if api.cert is not None else session.cert
        self._url = self._adapter.request_url(self._probe, self._proxies)
        self._session_headers = {k: v for k, v in session.headers.items() if v is not None}
        self._timeout = Timeout(connect=PUSH_TIMEOUT, read=PUSH_TIMEOUT)
        self._pool: HTTPConnectionPool | None = None

    def work_add(self, connector_id: str, name: str) -> str:
        """``api.work.initiate_work``: the new work's id."""
        answer = self.query(WORK_ADD_MUTATION, {"connectorId": connector_id, "friendlyName": name})
        return str(answer["data"]["workAdd"]["id"])

    def to_processed(self, work_id: str, message: str) -> None:
        """``api.work.to_processed`` (not in error)."""
        self.query(
            WORK_TO_PROCESSED_MUTATION, {"id": work_id, "message": message, "inError": False}
        )

    def push(self, connector_id: str, bundle: bytes, work_id: str) -> None:
        """``api.send_bundle_to_api(connector_id=..., bundle=..., work_id=...)`` without its copies.

        pycti's version takes the bundle as text and serialises it into the GraphQL request: the
        file's bytes, its text, the escaped text and the encoded body are all in memory during
        the push (about four times a 40 MB file, issue 6). Here the body is written from the
        file's bytes as it is sent, escaped a slice at a time (:class:`PushBody`).
        """
        body = PushBody(connector_id, bundle, work_id)
        if len(body) <= STREAM_PUSH_BYTES:
            self._post(body.as_bytes(), len(body))
        else:
            # Sent piece by piece under the announced length (never chunked encoding).
            self._post(iter(body.read, b""), len(body))

    def query(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        """One GraphQL request, answered as ``api.query`` answers it."""
        body = json.dumps({"query": document, "variables": variables}).encode()
        return self._post(body, len(body))

    def _post(self, body: bytes | Iterator[bytes], length: int) -> dict[str, Any]:
        headers = {
            **self._session_headers,
            **self._api.request_headers,
            "Content-Type": "application/json",
            "Content-Length": str(length),
        }
        pool = self._pool or self._connection_pool()
        try:
            try:
                response = self._urlopen(pool, body, headers)
            except urllib3.exceptions.ClosedPoolError:
                # urllib3 1.x closes a pool its manager drops (too many hosts, or the session
                # closed): take the adapter's current one, as requests would. Nothing was sent.
                response = self._urlopen(self._connection_pool(), body, headers)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _as_requests_error(exc) from exc
        if self._on_status is not None:
            self._on_status(response.status)
        if 300 <= response.status < 400:
            # Not followed (requests re-sends a POST only on 307/308, and pycti's registration
            # would have followed it): the answer says where OpenCTI is, the user fixes the URL.
            location = response.headers.get("Location") or "no Location given"
            raise ValueError(
                f"OpenCTI redirects {self._api.api_url} to {location}: set OPENCTI_URL to the "
                "address the platform answers on"
            )
        if response.status != 200:
            raise ValueError(response.data.decode("utf-8", "replace"))
        try:
            result = json.loads(response.data)
        except ValueError:
            raise requests.exceptions.InvalidJSONError(
                "OpenCTI answered HTTP 200 with a body that is not JSON"
            ) from None
        if "errors" in result:
            # pycti's query(): the first error's name (or message) and message, plus its data.
            error = result["errors"][0]
            detail = {
                "name": error.get("name", error.get("message")),
                "error_message": error.get("message"),
            }
            data = dict(error.get("data") or {})
            data.pop("input", None)
            raise ValueError({**detail, **data})
        return dict(result)

    def _connection_pool(self) -> HTTPConnectionPool:
        """The pool the adapter gives this URL, TLS and proxy (requests asks on every call;
        here once, and again only if it was closed)."""
        pool = self._adapter.get_connection_with_tls_context(
            self._probe, self._verify, proxies=self._proxies, cert=self._cert
        )
        assert isinstance(pool, HTTPConnectionPool)  # HTTPS pools are a subclass
        self._adapter.cert_verify(  # type: ignore[no-untyped-call]
            pool, self._probe.url, self._verify, self._cert
        )
        self._pool = pool
        return pool

    def _urlopen(
        self, pool: HTTPConnectionPool, body: bytes | Iterator[bytes], headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        return pool.urlopen(
            "POST",
            self._url,
            body=body,
            headers=headers,
            redirect=False,
            assert_same_host=False,
            preload_content=True,
            decode_content=True,
            retries=self._adapter.max_retries,
            timeout=self._timeout,
        )


def _as_requests_error(exc: BaseException) -> requests.RequestException:
    """The exception ``HTTPAdapter.send`` raises for a urllib3 or socket failure."""
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    kind: type[requests.RequestException] = requests.ConnectionError
    if isinstance(reason, urllib3.exceptions.ProxyError):
        kind = requests.exceptions.ProxyError
    elif isinstance(reason, urllib3.exceptions.SSLError):
        kind = requests.exceptions.SSLError
    elif isinstance(reason, urllib3.exceptions.NewConnectionError):
        kind = requests.ConnectionError
    elif isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        kind = requests.exceptions.ConnectTimeout
    elif isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        kind = requests.exceptions.ReadTimeout
    return kind(str(exc))


class PushBody:
    """The JSON body of one push, produced from the bundle's bytes slice by slice.

    A file-like object of known length (requests sends it with a ``Content-Length``): ``read``
    returns the next piece whatever size is asked for. JSON escaping works byte by byte (quote,
    backslash and control characters are all ASCII, never part of a UTF-8 sequence), so slicing
    anywhere is safe, and the length is known up front from :func:`pushed_size_of`.
    """

    def __init__(self, connector_id: str, bundle: bytes, work_id: str) -> None:
        variables_head = json.dumps({"connectorId": connector_id, "work_id": work_id})[:-1]
        self._head = (
            f'{{"query": {json.dumps(PUSH_MUTATION)}, "variables": {variables_head}, "bundle": "'
        ).encode()
        self._tail = b'"}}'
        self._bundle = memoryview(bundle)
        self._length = len(self._head) + pushed_size_of(bundle) - 2 + len(self._tail)
        self._offset = -1  # -1: the head is next
        self._sent = 0

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._offset < 0:
            self._offset = 0
            piece = self._head
        elif self._offset < len(self._bundle):
            chunk = self._bundle[self._offset : self._offset + STREAM_PUSH_BYTES]
            self._offset += len(chunk)
            piece = escape_json_bytes(bytes(chunk))
        elif self._offset == len(self._bundle):
            self._offset += 1
            piece = self._tail
        else:
            piece = b""
        self._sent += len(piece)
        if not piece and self._sent != self._length:
            raise RuntimeError(f"push body is {self._sent} bytes, {self._length} announced")
        return piece

    def as_bytes(self) -> bytes:
        return b"".join(iter(lambda: self.read(), b""))


_ESCAPED_CONTROL = {
    bytes([code]): {
        8: b"\\b",
        9: b"\\t",
        10: b"\\n",
        12: b"\\f",
        13: b"\\r",
    }.get(code, f"\\u{code:04x}".encode())
    for code in range(32)
}
_CONTROL_RE = re.compile(rb"[\x00-\x1f]")


def escape_json_bytes(data: bytes) -> bytes:
    """The inside of a JSON string holding UTF-8 ``data`` (quote, backslash, controls escaped)."""
    escaped = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    if escaped.translate(None, _NOT_CONTROL):
        escaped = _CONTROL_RE.sub(lambda match: _ESCAPED_CONTROL[match.group()], escaped)
    return escaped


def _parse_bundle(data: bytes) -> dict[str, Any]:
    # The platform's own check (sendStixBundle in opencti-graphql src/domain/stix.js): type
    # "bundle" and a non-empty objects list.
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PermanentImportError(f"not a JSON document: {exc}") from None
    if not isinstance(parsed, dict) or parsed.get("type") != "bundle":
        raise PermanentImportError("not a STIX bundle (type is not 'bundle')")
    objects = parsed.get("objects")
    if not isinstance(objects, list) or not objects:
        raise PermanentImportError("the bundle has no objects")
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise PermanentImportError("the bundle holds an object without an id")
    return parsed


def _rank_of(obj_type: str) -> int:
    return _TYPE_RANK.get(obj_type, 2)


def _chunk_bytes(bundle_id: str, index: int, objects: Sequence[bytes | memoryview]) -> bytes:
    chunk_id = f"bundle--{uuid.uuid5(uuid.NAMESPACE_URL, f'{bundle_id}/{index}')}"
    pieces: list[bytes | memoryview] = [
        b'{"type":"bundle","id":"',
        chunk_id.encode(),
        b'","objects":[',
    ]
    for number, obj in enumerate(objects):
        if number:
            pieces.append(b",")
        pieces.append(obj)
    pieces.append(b"]}")
    return b"".join(pieces)


#: Every byte but the control characters (which JSON escapes).
_NOT_CONTROL = bytes(range(32, 256))
#: Control characters JSON escapes with two characters (\b \t \n \f \r); the others take six.
_SHORT_ESCAPES = frozenset(b"\b\t\n\f\r")


def pushed_size_of(data: bytes) -> int:
    """``_pushed_size(data.decode())`` without building the escaped copy (UTF-8 ``data``).

    The control characters are picked out a megabyte at a time: ``bytes.translate`` allocates
    an output as big as its input before it shrinks it, a copy of a 40 MB file otherwise.
    """
    extra = data.count(b'"') + data.count(b"\\")
    for start in range(0, len(data), _CONTROL_SCAN):
        for byte in data[start : start + _CONTROL_SCAN].translate(None, _NOT_CONTROL):
            extra += 1 if byte in _SHORT_ESCAPES else 5
    return len(data) + 2 + extra


_CONTROL_SCAN = 1 << 20


def _pushed_size(text: str) -> int:
    # The bundle travels as a JSON string inside the GraphQL variables: quotes and backslashes
    # are escaped, so the body is bigger than the file.
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def _matches(text: str, markers: tuple[str, ...]) -> bool:
    return any(marker in text for marker in markers)


def _by_status(status: int, text: str, work_id: str | None) -> ImportFailure:
    detail = f"HTTP {status}: {text[:300]}"
    if status in (401, 403):
        return PlatformAuthError(f"OpenCTI refused the token: {detail}", work_id=work_id)
    if status == 413:
        return PermanentImportError(
            f"OpenCTI refused the push as too large ({detail}); lower UPLOADER_MAX_PUSH_BYTES to the platform's APP__MAX_PAYLOAD_BODY_SIZE and replay",
            work_id=work_id,
        )
    # 429, 5xx, and other 4xx (a proxy, a wrong URL, a schema mismatch): not the bundle's fault.
    return TransientImportError(f"OpenCTI answered {detail}", work_id=work_id)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ValueError) and exc.args and isinstance(exc.args[0], dict):
        error: dict[str, Any] = exc.args[0]
        parts = [str(error.get("name", "")), str(error.get("error_message", ""))]
        parts += [f"{k}={v}" for k, v in error.items() if k not in ("name", "error_message")]
        return " ".join(p for p in _dedupe(parts) if p)
    return f"{type(exc).__name__}: {exc}"


def _dedupe(parts: list[str]) -> Iterator[str]:
    seen: set[str] = set()
    for part in parts:
        if part not in seen:
            seen.add(part)
            yield part


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, requests.ConnectionError | requests.Timeout)
