"""pycti's failures, and the errors a platform reports on a work, for the uploader's error tree.

pycti raises what ``OpenCTIApiClient.query`` (``pycti/api/opencti_api_client.py``) gives it:
``requests`` exceptions for the transport (transient: the platform is not reachable),
``ValueError({name, error_message, ...})`` for a GraphQL error, whose ``name`` (pycti 7: the
error's ``extensions.code``; pycti 6.5: the message when the platform sends no top-level name) or
message decides, and ``ValueError(body)`` for an answer other than HTTP 200, which keeps no status
code: the body's text decides (413 "request entity too large" is permanent, anything else
transient, and said to be often the address's fault). pika's errors (the ``amqp`` protocol) are
transient. What is not recognised is transient: a file is never failed for a reason not understood.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from uploader.backpressure import QueuePaused
from uploader.errors import (
    ImportFailure,
    PermanentImportError,
    PlatformAuthError,
    TransientImportError,
)

# The platform's error codes (opencti-graphql src/config/errors.js), as pycti 7 reports them in
# ``name``; pycti 6.5 reports the message there when the error has no top-level name.
_AUTH_CODES = frozenset({"AUTH_REQUIRED", "AUTH_FAILURE", "FORBIDDEN_ACCESS"})
_TRANSIENT_CODES = frozenset({"LOCK_ERROR", "DATABASE_ERROR", "ENGINE_ERROR", "TIMEOUT_ERROR"})
_PERMANENT_CODES = frozenset({"UNSUPPORTED_ERROR", "FUNCTIONAL_ERROR", "VALIDATION_ERROR"})

# Text fragments, for what pycti passes on as text only (checked in this order; first match wins).
# Auth comes first: "Invalid connector" is wrapped by the platform in "Invalid bundle".
_AUTH_MARKERS = (
    "you must be logged in",
    "auth_required",
    "authrequired",
    "you are not allowed",
    "forbidden",
    "invalid connector",
    "a token must be set",
)
_TRANSIENT_MARKERS = (
    "not reachable",
    "starting",
    "timeout",
    "timed out",
    "too many requests",
    "lock",
    "database",
    "bad gateway",
    "service unavailable",
    "temporarily",
)
_PERMANENT_MARKERS = (
    "invalid bundle",
    "invalid stix bundle",
    "nothing to import",
    "too large",
    "payloadtoolarge",
)


def classify(exc: BaseException, work_id: str | None, token: str) -> ImportFailure:
    """Map what pycti raised to our error tree, without ``token`` in the text."""
    if isinstance(exc, ImportFailure):
        if work_id is not None and exc.work_id is None:
            exc.work_id = work_id
        return exc
    if isinstance(exc, QueuePaused):
        return TransientImportError(str(exc), work_id=work_id)
    text = redact(describe(exc), token)
    if unreachable(exc) or isinstance(exc, requests.RequestException):
        return TransientImportError(f"OpenCTI not reachable: {text}", work_id=work_id)
    if type(exc).__module__.startswith("pika"):
        return TransientImportError(f"RabbitMQ push failed: {text}", work_id=work_id)
    if isinstance(exc, ValueError) and exc.args and isinstance(exc.args[0], dict):
        code = str(exc.args[0].get("name", "")).upper()
        if code in _AUTH_CODES:
            return PlatformAuthError(f"OpenCTI refused the connector: {text}", work_id=work_id)
        if code in _TRANSIENT_CODES:
            return TransientImportError(f"OpenCTI is not ready: {text}", work_id=work_id)
        if code in _PERMANENT_CODES and "invalid connector" not in text.lower():
            return PermanentImportError(f"OpenCTI refused the bundle: {text}", work_id=work_id)
    lowered = text.lower()
    if _matches(lowered, _AUTH_MARKERS):
        return PlatformAuthError(f"OpenCTI refused the connector: {text}", work_id=work_id)
    if "request entity too large" in lowered:
        return PermanentImportError(
            f"OpenCTI refused the push as too large ({text[:300]}); lower "
            "UPLOADER_MAX_PUSH_BYTES to the platform's APP__MAX_PAYLOAD_BODY_SIZE and replay",
            work_id=work_id,
        )
    if _matches(lowered, _TRANSIENT_MARKERS):
        return TransientImportError(f"OpenCTI is not ready: {text}", work_id=work_id)
    if _matches(lowered, _PERMANENT_MARKERS):
        return PermanentImportError(f"OpenCTI refused the bundle: {text}", work_id=work_id)
    if isinstance(exc, ValueError) and exc.args and isinstance(exc.args[0], str):
        # pycti's ValueError(body) of an answer other than HTTP 200 (a proxy's or load
        # balancer's page, a redirect): not the bundle's fault, and often the address's.
        return TransientImportError(
            f"OpenCTI answered with something other than GraphQL ({text[:300]}); if this "
            "lasts, check that OPENCTI_URL is the platform's own address",
            work_id=work_id,
        )
    # Unknown: keep the file pending rather than risk failing good data (a transient failure
    # is retried; a permanent one sends the file to failed/ for good).
    return TransientImportError(f"OpenCTI import failed: {text[:500]}", work_id=work_id)


def graphql_error(exc: BaseException) -> bool:
    """Whether ``exc`` is pycti's ``ValueError({name, error_message, ...})`` of a GraphQL error."""
    return isinstance(exc, ValueError) and bool(exc.args) and isinstance(exc.args[0], dict)


def names_unknown_connector(exc: BaseException) -> bool:
    """Whether the platform's answer says it does not know the connector.

    ``stixBundlePush``: "Invalid connector", the cause of its "Invalid bundle"
    (``sendStixBundle``, opencti-graphql ``src/domain/stix.js``); ``pingConnector``: "No connector
    found with the specified ID" (``src/domain/connector.js``).
    """
    if not graphql_error(exc):
        return False
    text = describe(exc).lower()
    return "invalid connector" in text or "no connector found" in text


def redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _matches(text: str, markers: tuple[str, ...]) -> bool:
    return any(marker in text for marker in markers)


def describe(exc: BaseException) -> str:
    if isinstance(exc, ValueError) and exc.args and isinstance(exc.args[0], dict):
        error: dict[str, Any] = exc.args[0]
        parts = [str(error.get("name", "")), str(error.get("error_message", ""))]
        parts += [
            f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
            for k, v in error.items()
            if k not in ("name", "error_message")
        ]
        return " ".join(dict.fromkeys(p for p in parts if p))
    return f"{type(exc).__name__}: {exc}"


def unreachable(exc: BaseException) -> bool:
    return isinstance(exc, requests.ConnectionError | requests.Timeout)


def work_errors(work: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The errors the platform's workers reported on a completed work (``work.errors``)."""
    return tuple(_work_error(error) for error in work.get("errors") or [])


def _work_error(error: Any) -> dict[str, Any]:
    """One entry of ``work.errors`` (the platform's ``WorkMessage``: timestamp, message, source)."""
    if not isinstance(error, dict):
        return {"timestamp": None, "message": str(error), "source": None}
    return {key: error.get(key) for key in ("timestamp", "message", "source")}


def errors_text(errors: tuple[dict[str, Any], ...]) -> str:
    lines = [f"OpenCTI completed the work with {len(errors)} error(s):"]
    for error in errors[:20]:
        source = str(error.get("source") or "")
        lines.append(f"{error.get('message')} (source: {source[:300] or 'not given'})")
    if len(errors) > 20:
        lines.append(f"... and {len(errors) - 20} more (platform_errors lists them all)")
    return "\n".join(lines)
