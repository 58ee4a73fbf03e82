"""Registering the uploader with OpenCTI as an ``EXTERNAL_IMPORT`` connector, through pycti.

The one module of the uploader that imports pycti (its classes, and its splitter's check of
which objects the platform imports); :mod:`uploader.importing.opencti` reaches pycti through it.

Before registering, the platform's version is read with the query of pycti's own
``OpenCTIApiClient.health_check`` (``query healthCheck { about { version } }``,
pycti/api/opencti_api_client.py), sent through ``OpenCTIApiClient.query`` of a client built
without its health check, which answers only True/False. Its answer decides three things:

* a refused token (``AUTH_REQUIRED``: the platform's ``about`` is behind ``@auth``) is a
  :class:`PlatformAuthError` before anything else is sent;
* a pycti newer than the platform (:func:`pycti_too_new`) is a :class:`PyctiMismatchError` naming
  both versions and the pip command, before the registration it would fail (pycti 7 asks
  ``registerConnector { jwks }``, which no 6.x schema has; pycti 6.9 asks ``config { s3 }``);
* a platform that is down or starting is a :class:`TransientImportError`.

A platform whose version cannot be read otherwise is no error: the registration goes ahead.
Registration is what ``OpenCTIConnectorHelper``'s constructor does (``registerConnector``, then
the ping thread), from the configuration dict built here out of our settings. When it fails,
the connector is read through a pycti client built without a health check
(``api.connector.read``: any query answers AUTH_REQUIRED to a wrong token, and None, no error,
for a connector not registered yet): its error tells a wrong token (:class:`PlatformAuthError`)
from a platform that is down or starting (:class:`TransientImportError`); a registration the
platform's schema refuses (``GRAPHQL_VALIDATION_FAILED``) is a :class:`PyctiMismatchError`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from pycti import OpenCTIApiClient, OpenCTIConnector, OpenCTIConnectorHelper
from pycti.utils.opencti_stix2_splitter import is_id_supported

from uploader.errors import (
    ImportFailure,
    PermanentImportError,
    PlatformConfigError,
    PyctiMismatchError,
    TransientImportError,
)
from uploader.importing.classify import classify
from uploader.importing.pycti_build import pycti_construction
from uploader.importing.refusals import installed_pycti, mismatch
from uploader.settings import UploaderSettings
from uploader.spool_ops.origin import SourceConnector

logger = logging.getLogger(__name__)

#: The document of pycti's ``OpenCTIApiClient.health_check`` (same operation name and fields).
HEALTH_QUERY = """
    query healthCheck {
      about {
        version
      }
    }
"""


def importable(stix_id: str) -> bool:
    """Whether the platform imports an object of this id (pycti's splitter's own check, which
    ``send_stix2_bundle`` applies before it pushes)."""
    return bool(is_id_supported(stix_id))


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


def pycti_too_new(pycti_version: str, platform_version: str) -> bool:
    """Whether pycti's major.minor is newer than the platform's (README, "Matching pycti to the
    platform": schemas grow, so an older pycti works with a newer platform, never the reverse;
    pycti 7's minor is a date, 7.YYMMDD). False when either version does not read as numbers."""
    mine, theirs = _major_minor(pycti_version), _major_minor(platform_version)
    return mine is not None and theirs is not None and mine > theirs


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = version.strip().split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return int(parts[0]), int(parts[1])


def _api_client(settings: UploaderSettings) -> Any:
    """A pycti client of the platform that sends nothing when built (no health check)."""
    s = settings
    token = s.opencti_token.get_secret_value()
    with pycti_construction():
        return OpenCTIApiClient(
            s.opencti_url, token, "error", s.opencti_ssl_verify, perform_health_check=False
        )


def platform_version(settings: UploaderSettings) -> str | None:
    """The platform's ``about { version }``; None when it does not say.

    Raises :class:`PlatformAuthError` for a refused token and :class:`TransientImportError` for a
    platform that is down, starting, or not answering GraphQL.
    """
    s = settings
    token = s.opencti_token.get_secret_value()
    try:
        answer = _api_client(s).query(HEALTH_QUERY)
    except Exception as exc:  # noqa: BLE001 - pycti raises ValueError/requests errors: classified
        failure = classify(exc, None, token)
        if isinstance(failure, PlatformConfigError):
            raise failure from None
        if isinstance(failure, PermanentImportError):
            return None
        raise TransientImportError(
            f"OpenCTI at {s.opencti_url} is not reachable or starting: {failure}"
        ) from None
    about = ((answer or {}).get("data") or {}).get("about") or {}
    version = about.get("version")
    return str(version) if version else None


def check_platform(settings: UploaderSettings) -> str | None:
    """The platform's version once it is known to work with the installed pycti (None: unknown).

    Raises :class:`PyctiMismatchError`, :class:`PlatformAuthError` or
    :class:`TransientImportError` (:func:`platform_version`).
    """
    version = platform_version(settings)
    if version is not None and pycti_too_new(installed_pycti(), version):
        raise mismatch(version, url=settings.opencti_url)
    return version


def create_helper(settings: UploaderSettings) -> tuple[Any, str | None]:
    """A registered pycti helper and the platform's version (None: not said), or the
    :class:`ImportFailure` that says why there is none."""
    version = check_platform(settings)
    with pycti_construction(settings.connector_name):
        try:
            helper = OpenCTIConnectorHelper(pycti_config(settings))
        except Exception as exc:  # noqa: BLE001 - pycti raises ValueError/requests errors/KeyError
            failure = why_not_registered(settings, exc)
            if isinstance(failure, PyctiMismatchError):
                # The schema refused pycti's registerConnector: the detail names the field.
                raise mismatch(version, failure.detail, url=settings.opencti_url) from None
            raise failure from None
    logger.info(
        "connector registered with OpenCTI",
        extra={
            "connector_id": helper.connect_id,
            "queue_protocol": settings.queue_protocol,
            "platform_version": version,
            "pycti_version": installed_pycti(),
        },
    )
    return helper, version


def why_not_registered(settings: UploaderSettings, exc: BaseException) -> ImportFailure:
    """Read the connector through pycti to tell a wrong token from a platform that is down."""
    s = settings
    token = s.opencti_token.get_secret_value()
    direct = classify(exc, None, token)
    if isinstance(direct, PlatformConfigError):
        return direct
    try:
        _api_client(s).connector.read(connector_id=s.connector_id)
    except Exception as probe_exc:  # noqa: BLE001 - classified
        failure = classify(probe_exc, None, token)
        if isinstance(failure, PlatformConfigError):
            return failure
        if isinstance(failure, TransientImportError):
            return TransientImportError(
                f"OpenCTI at {s.opencti_url} is not reachable or starting: {failure}"
            )
    return direct


def register_source(helper: Any, source: SourceConnector) -> dict[str, Any]:
    """Register the connector that wrote an adopted diode file, as diode-import does.

    ``DiodeImport._process_bundle`` (OpenCTI-Platform/connectors
    ``external-import/diode-import/src/diode_import.py``) sends
    ``helper.api.connector.register(OpenCTIConnector(id, name, type, scope, auto,
    only_contextual=False, playbook_compatible=False, auto_update=False,
    enrichment_resolution="none"))``; pycti 6.5 has no ``auto_update``/``enrichment_resolution``,
    so only the arguments the installed ``OpenCTIConnector`` takes are passed. Returns the
    platform's answer (``registerConnector``: its ``config`` names the source's queues).
    Raises :class:`PermanentImportError` for a connector type pycti does not know.
    """
    arguments: dict[str, Any] = {
        "connector_id": source.id,
        "connector_name": source.name,
        "connector_type": source.type,
        "scope": source.scope,
        "auto": source.auto,
        "only_contextual": False,
        "playbook_compatible": False,
        "auto_update": False,
        "enrichment_resolution": "none",
    }
    accepted = inspect.signature(OpenCTIConnector.__init__).parameters
    try:
        connector = OpenCTIConnector(**{k: v for k, v in arguments.items() if k in accepted})
    except ValueError as exc:
        raise PermanentImportError(
            f"the diode file's connector {source.id} cannot be registered: {exc}"
        ) from None
    return dict(helper.api.connector.register(connector) or {})


def impersonating_client(settings: UploaderSettings, applicant_id: str) -> Any:
    """A pycti client whose requests carry ``opencti-applicant-id: <applicant_id>``
    (``OpenCTIApiClient.set_applicant_id_header``, what pycti's helper does for a work's
    applicant): the platform then imports what it pushes as that user. One client per applicant,
    so that no header is switched on a client other threads use."""
    client = _api_client(settings)
    client.set_applicant_id_header(applicant_id)
    return client
