"""pycti's failures, and the errors a platform reports on a work, for the uploader's error tree.

pycti raises what ``OpenCTIApiClient.query`` (``pycti/api/opencti_api_client.py``) gives it:
``requests`` exceptions for the transport (transient: the platform is not reachable),
``ValueError({name, error_message, ...})`` for a GraphQL error in an HTTP 200 answer, whose
``name`` (pycti 7: the error's ``extensions.code``; pycti 6.5: the message when the platform sends
no top-level name) or message decides, and ``ValueError(body)`` for an answer other than HTTP 200,
which keeps no status code. Such a body that is GraphQL's own error answer (Apollo answers a
document its schema refuses with HTTP 400 and ``extensions.code`` ``GRAPHQL_VALIDATION_FAILED``)
is read as one; any other body decides by its text (413 "request entity too large" is permanent,
401/403 pages refuse the token, anything else transient, and said to be often the address's
fault). pika's errors (the ``amqp`` protocol) are transient. What is not recognised is transient:
a file is never failed for a reason not understood.

Two answers stop the command instead of a retry (:class:`PlatformConfigError`): the platform
refusing the token or the token's user (``AUTH_ERRORS`` in opencti-graphql
``src/config/errors.js``: ``AUTH_REQUIRED``, ``AUTH_FAILURE``, ``FORBIDDEN_ACCESS`` "You are not
allowed to do this." for a user without the CONNECTORAPI capability, ...), and a document the
platform's schema refuses, which only a pycti newer than the platform sends.
"""

from __future__ import annotations

import importlib.metadata
import json
from typing import Any

import requests

from uploader.backpressure import QueuePaused
from uploader.errors import (
    ImportFailure,
    PermanentImportError,
    PlatformAuthError,
    PyctiMismatchError,
    TransientImportError,
)

# The platform's error codes (opencti-graphql src/config/errors.js), as pycti 7 reports them in
# ``name``; pycti 6.5 reports the message there when the error has no top-level name. The auth
# codes are that file's ``AUTH_ERRORS``.
_AUTH_CODES = frozenset(
    {
        "AUTH_REQUIRED",
        "AUTH_FAILURE",
        "FORBIDDEN_ACCESS",
        "OTP_REQUIRED",
        "OTP_REQUIRED_ACTIVATION",
        "PASSWORD_CHANGE_REQUIRED",
    }
)
# Apollo Server's codes for a document the schema refuses (``ApolloServerErrorCode`` in
# @apollo/server); BAD_USER_INPUT only with a message of GraphQL's variable coercion (an input
# field the platform's input type does not have), never a resolver's own refusal.
_SCHEMA_CODES = frozenset({"GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED"})
_SCHEMA_MARKERS = (
    "cannot query field",
    "unknown argument",
    "is not defined by type",
    "unknown type",
)
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
    "unauthorized",
    "authorization required",
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
    error = _graphql_error_of(exc)
    if error is not None:
        code = str(error.get("name", "")).upper()
        message = redact(str(error.get("error_message", "")), token)
        if _refuses_schema(code, message):
            return mismatch(None, message, work_id=work_id)
        if code in _AUTH_CODES:
            return auth_refusal(code, message, work_id=work_id)
        if code in _TRANSIENT_CODES:
            return TransientImportError(f"OpenCTI is not ready: {text}", work_id=work_id)
        if code in _PERMANENT_CODES and "invalid connector" not in text.lower():
            return PermanentImportError(f"OpenCTI refused the bundle: {text}", work_id=work_id)
    lowered = text.lower()
    if "invalid connector" in lowered:
        # The platform's cause of an "Invalid bundle" for a connector it does not know
        # (sendStixBundle, src/domain/stix.js): registered again by uploader.opencti, not final.
        return TransientImportError(f"OpenCTI does not know the connector: {text}", work_id=work_id)
    if _matches(lowered, _AUTH_MARKERS):
        return auth_refusal("", text[:300], work_id=work_id)
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


def auth_refusal(code: str, message: str, *, work_id: str | None = None) -> PlatformAuthError:
    """The one line for a refused token, or a token whose user may not act as a connector."""
    said = " ".join(p for p in (code, message) if p) or "refused"
    if code == "FORBIDDEN_ACCESS" or "not allowed" in message.lower():
        # registerConnector, workAdd and stixBundlePush need the CONNECTORAPI capability
        # (@auth(for: [CONNECTORAPI]) in opencti-graphql config/schema/opencti.graphql).
        return PlatformAuthError(
            f"OpenCTI refused the user of OPENCTI_TOKEN ({said}): give that user the "
            'CONNECTORAPI capability (a role with "Connectors API usage"), or set '
            "OPENCTI_TOKEN to the token of a user that has it",
            work_id=work_id,
        )
    return PlatformAuthError(
        f"OpenCTI refused OPENCTI_TOKEN ({said}): set OPENCTI_TOKEN to the API token of the "
        "connector's OpenCTI user",
        work_id=work_id,
    )


def installed_pycti() -> str:
    """The installed pycti's version (its distribution metadata; pycti itself is not imported)."""
    try:
        return importlib.metadata.version("pycti")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pycti_install(platform_version: str) -> str | None:
    """The pip command that installs the pycti of ``platform_version`` (README, "Matching pycti
    to the platform": pycti carries its platform's major.minor; 7.x minors are dates)."""
    parts = platform_version.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return f"pip install 'pycti=={parts[0]}.{parts[1]}.*'"


def mismatch(
    platform_version: str | None, detail: str = "", *, url: str = "", work_id: str | None = None
) -> PyctiMismatchError:
    """The one line for a pycti that does not fit the platform: both versions, the command.

    ``detail`` is the platform's refusal of a request (its schema has no such field), when that
    is how the mismatch showed; without it, the versions alone told.
    """
    pycti_version = installed_pycti()
    where = f" at {url}" if url else ""
    platform = f"OpenCTI {platform_version or '(version unknown)'}{where}"
    install = pycti_install(platform_version) if platform_version else None
    if detail:
        why = (
            f"pycti {pycti_version} does not fit {platform}: its schema refused pycti's "
            f"request ({detail[:200]})"
        )
    else:
        why = f"pycti {pycti_version} is newer than {platform} and cannot work with it"
    remedy = (
        f"install the matching pycti: {install}"
        if install
        else "install the pycti of the platform's version: pip install 'pycti==<major>.<minor>.*'"
    )
    return PyctiMismatchError(
        f"{why}; {remedy}",
        pycti_version=pycti_version,
        platform_version=platform_version,
        install=install,
        detail=detail,
        work_id=work_id,
    )


def _graphql_error_of(exc: BaseException) -> dict[str, Any] | None:
    """pycti's error dict, or the first error of a GraphQL error body pycti passed on as text."""
    if not isinstance(exc, ValueError) or not exc.args:
        return None
    arg = exc.args[0]
    if isinstance(arg, dict):
        return arg
    if not isinstance(arg, str) or not arg.lstrip().startswith("{"):
        return None
    try:
        body = json.loads(arg)
    except ValueError:
        return None
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return None
    first = errors[0]
    extensions = first.get("extensions")
    code = extensions.get("code") if isinstance(extensions, dict) else None
    name = first.get("name") or code or ""
    return {"name": name, "error_message": str(first.get("message", ""))}


def _refuses_schema(code: str, message: str) -> bool:
    if code in _SCHEMA_CODES:
        return True
    # pycti 6.5 puts the message in ``name`` when the error has no top-level name.
    loose = code in ("BAD_USER_INPUT", "", message.upper())
    return loose and _matches(message.lower(), _SCHEMA_MARKERS)


def recognised(exc: BaseException) -> bool:
    """Whether ``exc`` is one of the shapes :func:`classify` reads (module docstring): a transport
    error, or pycti's ``ValueError`` of an error answer. Anything else is a bug worth a traceback."""
    if isinstance(exc, requests.RequestException):
        return True
    return isinstance(exc, ValueError) and bool(exc.args) and isinstance(exc.args[0], dict | str)


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
