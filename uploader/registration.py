"""Registering the uploader with OpenCTI as an ``EXTERNAL_IMPORT`` connector, through pycti.

Registration is what ``OpenCTIConnectorHelper``'s constructor does (``registerConnector``, then
the ping thread), from the configuration dict built here out of our settings. When it fails,
pycti's own health check answers only True/False, so the connector is read through a pycti
client built without one (``api.connector.read``: any query answers AUTH_REQUIRED to a wrong
token, and None, no error, for a connector not registered yet): its error tells a wrong token
(:class:`PlatformAuthError`) from a platform that is down or starting
(:class:`TransientImportError`).
"""

from __future__ import annotations

import logging
from typing import Any

from pycti import OpenCTIApiClient, OpenCTIConnectorHelper

from uploader.classify import classify
from uploader.errors import ImportFailure, PlatformAuthError, TransientImportError
from uploader.pycti_build import pycti_construction
from uploader.settings import UploaderSettings

logger = logging.getLogger(__name__)


def pycti_config(settings: UploaderSettings) -> dict[str, dict[str, Any]]:
    """The configuration ``OpenCTIConnectorHelper`` reads, from our settings."""
    s = settings
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
            "queue_threshold": s.queue_threshold,
            "run_and_terminate": False,
            # No workbench/draft detour and no copy to a directory: straight to the queue.
            "validate_before_import": False,
            "send_to_queue": True,
            "send_to_directory": False,
        },
    }


def create_helper(settings: UploaderSettings) -> Any:
    """A registered pycti helper, or the :class:`ImportFailure` that says why there is none."""
    with pycti_construction():
        try:
            helper = OpenCTIConnectorHelper(pycti_config(settings))
        except Exception as exc:  # noqa: BLE001 - pycti raises ValueError/requests errors/KeyError
            raise why_not_registered(settings, exc) from None
    logger.info(
        "connector registered with OpenCTI",
        extra={"connector_id": helper.connect_id, "queue_protocol": settings.queue_protocol},
    )
    return helper


def why_not_registered(settings: UploaderSettings, exc: BaseException) -> ImportFailure:
    """Read the connector through pycti to tell a wrong token from a platform that is down."""
    s = settings
    token = s.opencti_token.get_secret_value()
    try:
        with pycti_construction():
            api = OpenCTIApiClient(
                s.opencti_url, token, "error", s.opencti_ssl_verify, perform_health_check=False
            )
        api.connector.read(connector_id=s.connector_id)
    except Exception as probe_exc:  # noqa: BLE001 - classified
        failure = classify(probe_exc, None, token)
        if isinstance(failure, PlatformAuthError):
            return PlatformAuthError(
                f"{failure}; check OPENCTI_TOKEN and that its user has the CONNECTORAPI capability"
            )
        if isinstance(failure, TransientImportError):
            return TransientImportError(
                f"OpenCTI at {s.opencti_url} is not reachable or starting: {failure}"
            )
    return classify(exc, None, token)
