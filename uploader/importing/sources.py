"""Pushing a file's parts in the configured queue protocol, as the uploader or, for an adopted diode
file, as the connector that wrote it (for :mod:`uploader.importing.opencti`).

What diode-import does per file (``DiodeImport._process_bundle``, OpenCTI-Platform/connectors
``external-import/diode-import/src/diode_import.py``), through pycti's public API and without
switching state on the helper that other threads use:

* the source connector is registered once per run (:func:`uploader.importing.registration.register_source`)
  and again after the platform said it does not know it (:meth:`SourceConnectors.forget`);
* the work is created under the source connector's id (``api.work.initiate_work``);
* ``api`` protocol: each push is ``send_bundle_to_api(connector_id=<source id>, …)`` sent by a
  client carrying the mapped applicant (``UPLOADER_APPLICANT_MAPPINGS``; unmapped: the
  connector's own user, as diode-import's ``applicant_mappings.get(applicant_id, None)``). The
  platform's ``stixBundlePush`` has no ``update`` argument (it queues with ``update: true``);
* ``amqp`` protocol: ``send_stix2_bundle(update=<the file's update>)`` reads the connector's id,
  queue configuration and applicant from the helper (``connect_id``, ``connector_config``,
  ``applicant_id``), which diode-import sets per file; here they are set and restored under a
  lock that every amqp push takes once any adopted file has been pushed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from uploader.importing.registration import impersonating_client, register_source
from uploader.settings import UploaderSettings
from uploader.spool_ops.origin import Origin, SourceConnector


class SourceConnectors:
    """The source connectors registered so far and one pycti client per mapped applicant."""

    def __init__(self, settings: UploaderSettings) -> None:
        self._settings = settings
        self._applicants = settings.applicants
        self._registered: dict[str, dict[str, Any]] = {}
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._helper_lock = threading.Lock()
        self._swapping = False

    def connector_id(self, helper: Any, source: SourceConnector) -> str:
        """The source's id, registered with the platform first if this run has not yet."""
        with self._lock:
            if source.id not in self._registered:
                answer = register_source(helper, source)
                self._registered[source.id] = dict(answer.get("config") or {})
        return source.id

    def forget(self, connector_id: str) -> None:
        """The platform does not know it (any more): register it again before the next file."""
        with self._lock:
            self._registered.pop(connector_id, None)

    def _applicant(self, origin: Origin) -> str | None:
        """The user to import as: the mapping of the file's applicant, None when unmapped."""
        if origin.applicant_id is None:
            return None
        return self._applicants.get(origin.applicant_id)

    def _api_for(self, helper: Any, origin: Origin | None) -> Any:
        """The pycti client that pushes for ``origin`` (the helper's own when not impersonating)."""
        applicant = None if origin is None else self._applicant(origin)
        if applicant is None:
            return helper.api
        with self._lock:
            client = self._clients.get(applicant)
            if client is None:
                client = self._clients[applicant] = impersonating_client(self._settings, applicant)
        return client

    def push(
        self, helper: Any, text: str, *, work_id: str, connector_id: str, origin: Origin | None
    ) -> None:
        """Push one part of a file's bundle under ``work_id`` (``UPLOADER_QUEUE_PROTOCOL``)."""
        if self._settings.queue_protocol == "api":
            self._api_for(helper, origin).send_bundle_to_api(
                connector_id=connector_id, bundle=text, work_id=work_id
            )
            return
        with self._amqp_helper(helper, origin):
            helper.send_stix2_bundle(
                text,
                work_id=work_id,
                # The spool holds the newest version of each object, so it may overwrite the
                # platform's copy (send_stix2_bundle's ``update``, pycti 6.x: "whether to update
                # data in the database"); an adopted diode file says its own. The api path has
                # no such flag: the platform's sendStixBundle (opencti-graphql
                # src/domain/stix.js) queues its bundle with update: true.
                update=True if origin is None or origin.connector is None else origin.update,
                cleanup_inconsistent_bundle=False,
            )

    def _amqp_helper(self, helper: Any, origin: Origin | None) -> Any:
        """A context in which ``helper.send_stix2_bundle`` publishes for ``origin``."""
        if origin is None or origin.connector is None:
            return self._locked() if self._swapping else nullcontext()
        return self._as_source(helper, origin, origin.connector)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._helper_lock:
            yield

    @contextmanager
    def _as_source(self, helper: Any, origin: Origin, source: SourceConnector) -> Iterator[None]:
        with self._helper_lock:
            self._swapping = True
            saved = (helper.connect_id, helper.connector_config, helper.applicant_id)
            with self._lock:
                config = self._registered.get(source.id) or helper.connector_config
            helper.connect_id = source.id
            helper.connector_config = config
            helper.applicant_id = self._applicant(origin)
            try:
                yield
            finally:
                helper.connect_id, helper.connector_config, helper.applicant_id = saved
