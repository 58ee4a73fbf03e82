"""The real :class:`uploader.importing.importer.Importer`: one spool file → one OpenCTI work, through pycti.

pycti is reached through :mod:`uploader.importing.registration`, the one module that imports it;
the CLI imports this one only for commands that import (pycti 6.x needs libmagic:
``pycti/api/opencti_api_client.py`` imports ``magic``). Per file it follows the diode-import
connector's sequence (``DiodeImport._process_bundle`` in OpenCTI-Platform/connectors
``external-import/diode-import/src/diode_import.py``), with pycti's public calls only:

* ``helper.api.work.initiate_work(connector_id, name)`` (``is_multipart=True`` when the file is
  cut into several pushes and the installed pycti has that argument, 7.x: the platform then
  completes the work only after ``to_processed``);
* per push, ``helper.api.send_bundle_to_api(connector_id=, bundle=, work_id=)`` in the ``api``
  protocol (what ``send_stix2_bundle`` calls there after running its splitter only to count and to
  refuse a bundle with nothing importable, both done already by :mod:`uploader.importing.chunking`), or
  ``helper.send_stix2_bundle(bundle, work_id=...)`` in the ``amqp`` protocol, whose split is what
  gets published;
* ``helper.api.work.to_processed(work_id, message)`` (``in_error=True`` on a failure);
* with ``UPLOADER_WAIT_FOR_WORK``, ``helper.api.work.get_work(work_id)`` until ``complete``
  (these two in :mod:`uploader.importing.works`);
* before each push, ``helper.api.connector.read(connector_id)`` at most every few seconds for the
  connector's queue size (:mod:`uploader.importing.backpressure`).

TLS and proxies are pycti's: ``opencti.ssl_verify`` is passed (pycti's default is off, ours on),
and pycti's ``requests`` session reads ``HTTPS_PROXY``/``NO_PROXY`` and ``REQUESTS_CA_BUNDLE``
from the environment on every call (requests' own behaviour for a session).

Where pycti is adapted, and why:

* pycti's constructors run inside :func:`uploader.importing.pycti_build.pycti_construction`, which keeps
  the CLI's logging, excepthook and settings (:mod:`uploader.importing.registration`).
* ``helper.stop()`` is never called: it sends ``deleteConnector``, which deletes the connector's
  works on the platform. :meth:`PyctiImporter.close` only stops the ping thread.
* pycti's health check answers only True/False: its query (``about { version }``) is sent through
  a pycti client built without it, before registering, so that a refused token or a pycti newer
  than the platform stops the command with one line instead of a retry; when building the helper
  fails, the connector is read through that client too (:mod:`uploader.importing.registration`).
* ``check_connector_buffering`` is not used: on any error it calls ``sys.excepthook`` (pycti's
  process-killing hook) and returns None; ``api.connector.read`` is the query it makes. Errors are
  classified by :mod:`uploader.importing.classify`.

A platform that no longer knows the connector refuses what it sends: the connector is registered
again and the file imported under a new work (:mod:`uploader.importing.reregistration`).
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any

from uploader.errors import ImportFailure, PlatformConfigError
from uploader.importing.backpressure import CHECK_INTERVAL, QueueGate, QueuePaused
from uploader.importing.chunking import Bundle
from uploader.importing.classify import (
    classify,
    graphql_error,
    names_unknown_connector,
    unreachable,
)
from uploader.importing.importer import PlatformCounts
from uploader.importing.registration import create_helper, importable
from uploader.importing.reregistration import ConnectorForgotten, Reregistration
from uploader.importing.sources import SourceConnectors
from uploader.importing.works import (
    WORK_POLL_INTERVAL,
    close_as_empty,
    mark_in_error,
    wait_for_work,
)
from uploader.settings import UploaderSettings
from uploader.spool_ops.origin import Origin
from uploader.spool_ops.outcome import ImportReceipt

logger = logging.getLogger(__name__)

#: The oldest pycti (and so OpenCTI platform) the uploader supports: the ``api`` queue protocol
#: with works needs 6.5.7, and the tests run with 6.5.10 and the newest 7.x (README, "pycti").
OLDEST_PYCTI = "6.5.10"


class PyctiImporter:
    """Imports spool bundles into OpenCTI as the registered ``EXTERNAL_IMPORT`` connector.

    Build it with ``PyctiImporter(settings)``; nothing touches the network until :meth:`connect`
    or the first :meth:`import_bundle` (which connects when needed, so a platform that is down at
    start-up is a :class:`TransientImportError` of the first file, not a crash).

    Errors: :class:`TransientImportError` (platform down or starting, connection refused, timeout,
    429, 5xx, work not completed within ``work_timeout``, stopping while the queue is over its
    threshold, a connector the platform forgot twice), :class:`PlatformAuthError` (wrong token,
    missing capability) and :class:`PyctiMismatchError` (pycti newer than the platform), both
    :class:`PlatformConfigError`: retrying cannot help,
    :class:`PermanentImportError` (the platform refused the bundle, or one object alone is over
    ``max_push_bytes``), :class:`WorkErrorsError` (with ``wait_for_work``: the platform's workers
    reported errors on the work). ``work_id`` is set on the error when a work had been created.
    """

    def __init__(
        self,
        settings: UploaderSettings,
        *,
        work_poll_interval: float = WORK_POLL_INTERVAL,
        queue_check_interval: float = CHECK_INTERVAL,
        metrics: PlatformCounts | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._work_poll_interval = work_poll_interval
        self._helper: Any = None
        self._platform_version: str | None = None
        self._multipart = False
        # Guards building the helper (registration, env shadowing, logging restore). Imports run
        # without it, one per feed thread at a time: the calls made pass work_id explicitly and
        # read no per-call helper state, and pycti itself shares helper.api's session between its
        # ping thread and the caller.
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._token = settings.opencti_token.get_secret_value()
        self._reregistration = Reregistration(settings.connector_id, self._token, metrics)
        self._last_answer: float | None = None
        self._sources = SourceConnectors(settings)
        self._gate = QueueGate(
            self.queue_size_mb, settings.queue_threshold, check_interval=queue_check_interval
        )

    @property
    def connector_id(self) -> str:
        return self._settings.connector_id

    @property
    def platform_version(self) -> str | None:
        """The platform's ``about { version }`` once connected (None: not yet, or not said)."""
        return self._platform_version

    @property
    def last_answer(self) -> float | None:
        """Unix time of the platform's last answer (a GraphQL error is one too), None before any."""
        return self._last_answer

    def probe(self) -> bool:
        """Ask the platform for our connector (pycti's ``api.connector.read``); True if it answered.

        Called by the heartbeat when the uploader has had nothing to import for a while. A null
        connector means the platform forgot it: it is registered again, as for an import.
        """
        seen = self._reregistration.count
        try:
            self.connect()
            details = self._helper.api.connector.read(connector_id=self.connector_id)
        except Exception:  # noqa: BLE001 - not reachable, or refusing our token: not an answer
            return False
        self._answered()
        if details is None:
            try:
                self._reregistration.register_again(
                    self._helper, seen, "connector(id) answered null"
                )
            except ImportFailure as exc:
                logger.warning("could not register the connector again: %s", exc)
        return True

    def _answered(self) -> None:
        self._last_answer = time.time()

    def connect(self) -> None:
        """Register the connector with OpenCTI (once); safe to call again after a failure."""
        with self._lock:
            if self._helper is None:
                helper, self._platform_version = create_helper(self._settings)
                self._answered()
                # pycti 7 marks a work that gets several bundles (``isMultiPartWork``); 6.x has
                # no such argument and completes the work as the expectations are met.
                initiate = helper.api.work.initiate_work
                self._multipart = "is_multipart" in inspect.signature(initiate).parameters
                self._helper = helper

    def close(self) -> None:
        """Stop pinging the platform. Never unregisters the connector (that deletes its works)."""
        self._closed.set()
        self._gate.close()
        with self._lock:
            helper = self._helper
        ping = getattr(helper, "ping", None)
        if ping is not None:
            ping.stop()

    def __enter__(self) -> PyctiImporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def queue_size_mb(self) -> float:
        """The connector's queue on the platform, in decimal megabytes (as pycti counts it)."""
        self.connect()
        details = self._helper.api.connector.read(connector_id=self.connector_id)
        queue = (details or {}).get("connector_queue_details") or {}
        return float(queue.get("messages_size") or 0) / 1_000_000

    def import_bundle(
        self, work_name: str, bundle: Bundle, origin: Origin | None = None
    ) -> ImportReceipt:
        """Import ``bundle`` under one new work; see :class:`uploader.importing.importer.Importer`.

        An adopted diode file (``origin`` with a connector) is imported as that connector
        (:mod:`uploader.importing.sources`).

        When the platform answers that it does not know our connector (module docstring), the
        connector is registered again and the file imported once more under a new work.
        """
        seen = self._reregistration.count
        try:
            return self._import(work_name, bundle, origin)
        except ConnectorForgotten as forgotten:
            failure = forgotten.failure
            self._reregistration.register_again(self._helper, seen, str(failure), failure.work_id)
        return self._import(work_name, bundle, origin, forgotten_again_is_final=True)

    def _import(
        self,
        work_name: str,
        bundle: Bundle,
        origin: Origin | None,
        *,
        forgotten_again_is_final: bool = False,
    ) -> ImportReceipt:
        pushes = bundle.pushes(importable)
        work_id: str | None = None
        source = None if origin is None else origin.connector
        # Our own id from the settings, never helper.connect_id (set per push in amqp).
        connector_id = self.connector_id
        try:
            self.connect()
            self._gate.wait()
            helper = self._helper
            if source is not None:
                connector_id = self._sources.connector_id(helper, source)
            if self._multipart and len(pushes) > 1:
                work_id = helper.api.work.initiate_work(connector_id, work_name, is_multipart=True)
            else:
                work_id = helper.api.work.initiate_work(connector_id, work_name)
            if not pushes:
                close_as_empty(helper.api.work, work_id, bundle.objects)
                self._answered()
                return ImportReceipt(str(work_id), connector_id, 0, bundle.objects)
            for number, chunk in enumerate(pushes):
                if number:
                    self._gate.wait()
                self._sources.push(
                    helper,
                    chunk.decode("utf-8"),
                    work_id=str(work_id),
                    connector_id=connector_id,
                    origin=origin,
                )
                if self._metrics is not None:
                    self._metrics.pushed()
            helper.api.work.to_processed(
                work_id, f"ctx-uploader: {bundle.objects} objects in {len(pushes)} push(es)"
            )
        except Exception as exc:  # pycti raises bare Exception/ValueError: classified here
            failure = classify(exc, work_id, self._token)
            if graphql_error(exc) and not isinstance(failure, PlatformConfigError):
                # An answer, though a refusal; a refused token or connector is not "well".
                self._answered()
            if self._metrics is not None and not isinstance(exc, QueuePaused):
                self._metrics.platform_error(failure, unreachable=unreachable(exc))
            if source is not None and names_unknown_connector(exc):
                # The platform forgot the source connector: registered again on the retry.
                self._sources.forget(source.id)
            elif not forgotten_again_is_final and self._reregistration.forgotten(self._helper, exc):
                # The connector's works went with it: nothing to mark in error.
                raise ConnectorForgotten(failure) from exc
            if work_id is not None and not unreachable(exc):
                mark_in_error(self._helper.api.work, work_id, failure, self._token)
            raise failure from exc
        self._answered()
        # The file's one INFO line, naming feed, file, work and objects, is the processor's.
        logger.debug(
            "bundle pushed to OpenCTI",
            extra={"work_id": work_id, "pushes": len(pushes), "objects": bundle.objects},
        )
        if self._settings.wait_for_work:
            wait_for_work(
                self._helper.api.work,
                str(work_id),
                timeout=self._settings.work_timeout,
                poll_interval=self._work_poll_interval,
                closed=self._closed,
                token=self._token,
            )
        return ImportReceipt(str(work_id), connector_id, len(pushes), bundle.objects)
