"""A platform that no longer knows the connector, and registering it again.

A platform that no longer knows the connector (database restored, connector deleted in the UI,
another platform at the URL) refuses what it sends; opencti-graphql answers ``stixBundlePush``
with ``UnsupportedError('Invalid bundle')`` caused by ``'Invalid connector'`` (``sendStixBundle``,
``src/domain/stix.js``) and ``workAdd`` with a TypeError naming nothing (its resolver in
``src/resolvers/connector.js`` dereferences the null connector), and pycti 6.x passes on only
"Invalid bundle"; so on a GraphQL error that names no cause ``connector(id)`` is asked, null for
an unknown connector. The connector is registered again with
``helper.api.connector.register(helper.connector)`` (what the helper's constructor sends), once for
all threads that met the answer, with a warning, and :mod:`uploader.importing.opencti` imports the
file under a new work.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from uploader.errors import ImportFailure
from uploader.importing.classify import classify, graphql_error, names_unknown_connector
from uploader.importing.importer import PlatformCounts

logger = logging.getLogger(__name__)


class ConnectorForgotten(Exception):  # noqa: N818 - a signal to the importer, never raised out of it
    """The platform answered as it does for an unknown connector; ``failure`` classifies it."""

    def __init__(self, failure: ImportFailure) -> None:
        self.failure = failure
        super().__init__(str(failure))


class Reregistration:
    """Tells the platform's answer to an unknown connector, and registers the connector again."""

    def __init__(self, connector_id: str, token: str, metrics: PlatformCounts | None) -> None:
        self._connector_id = connector_id
        self._token = token
        self._metrics = metrics
        self._lock = threading.Lock()
        self._count = 0

    @property
    def count(self) -> int:
        """Registrations after the first, for telling one forgetting apart from the next."""
        return self._count

    def forgotten(self, helper: Any, exc: BaseException) -> bool:
        """Whether ``exc`` is the platform's answer to a connector it does not know."""
        if names_unknown_connector(exc):
            return True
        if not graphql_error(exc) or helper is None:
            return False
        # workAdd for an unknown connector fails inside the platform's resolver with a TypeError
        # that names nothing, and pycti 6.x keeps only "Invalid bundle" of a push's refusal (it
        # drops the error's data, where the cause is): ask the platform whether it knows us.
        try:
            return helper.api.connector.read(connector_id=self._connector_id) is None
        except Exception:  # noqa: BLE001 - no answer: not evidence that it forgot us
            return False

    def register_again(
        self, helper: Any, seen: int, reason: str, work_id: str | None = None
    ) -> None:
        """Register the connector again, once for the answers met while :attr:`count` was ``seen``."""
        with self._lock:
            if self._count != seen:
                return  # another feed's thread met the same answer and registered already
            try:
                # What OpenCTIConnectorHelper.__init__ sends (pycti's public connector API).
                helper.api.connector.register(helper.connector)
            except Exception as exc:  # classified like any pycti failure
                raise classify(exc, work_id, self._token) from exc
            self._count += 1
        if self._metrics is not None:
            self._metrics.registered_again()
        logger.warning(
            "OpenCTI does not know connector %s (database restored, connector deleted in the UI, "
            "or another platform at OPENCTI_URL): registered it again",
            self._connector_id,
            extra={"connector_id": self._connector_id, "reason": reason[:300]},
        )
