"""pycti's failures sorted into the uploader's error tree: by type where pycti raises types, by
the platform's error code where it keeps one, and by :data:`PATTERNS` where only text is left.

What ``OpenCTIApiClient.query`` (``pycti/api/opencti_api_client.py``) raises, in every pycti
checked (6.5.10, 6.8.17, 6.9.29, 7.261026.0):

* ``requests`` exceptions from its session (transient: the platform is not reachable);
* ``ValueError({name, error_message, ...})`` for a GraphQL error in an HTTP 200 answer, whose
  ``name`` is the error's code (pycti 7: ``extensions.code`` when the platform sends no top-level
  name; pycti 6.5: the message then);
* ``ValueError(body)`` for an answer other than HTTP 200, which keeps no status code. A body that
  is GraphQL's own error answer (Apollo answers a document its schema refuses with HTTP 400 and
  ``extensions.code`` ``GRAPHQL_VALIDATION_FAILED``) is read as one; any other body (a proxy's
  page: 413, 401/403, 502...) decides by :data:`PATTERNS`.

pika's errors (the ``amqp`` protocol: ``send_stix2_bundle`` connects and publishes with pika) are
transient. What is not recognised is transient: a file is never failed for a reason not
understood. Two answers stop the command instead of a retry (:class:`PlatformConfigError`): the
platform refusing the token or its user (``AUTH_ERRORS`` in opencti-graphql
``src/config/errors.js``), and a document its schema refuses, which only a pycti newer than the
platform sends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

import requests

from uploader.errors import ImportFailure, PermanentImportError, TransientImportError
from uploader.importing.backpressure import QueuePaused
from uploader.importing.refusals import auth_refusal, mismatch

# The platform's error codes (opencti-graphql src/config/errors.js), as pycti reports them in
# ``name``. The auth codes are that file's ``AUTH_ERRORS``.
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
_TRANSIENT_CODES = frozenset({"LOCK_ERROR", "DATABASE_ERROR", "ENGINE_ERROR", "TIMEOUT_ERROR"})
_PERMANENT_CODES = frozenset({"UNSUPPORTED_ERROR", "FUNCTIONAL_ERROR", "VALIDATION_ERROR"})

Verdict = Literal["schema", "auth", "forgotten", "too-large", "transient", "permanent"]


@dataclass(frozen=True)
class Pattern:
    """One text pycti passes on: ``verdict`` when ``regex`` matches; ``raised_by`` is where pycti
    raises it, ``text_from`` who writes the text."""

    verdict: Verdict
    regex: re.Pattern[str]
    raised_by: str
    text_from: str


# Where pycti raises a text (the same lines in pycti 6.5.10, 6.8.17, 6.9.29 and 7.261026.0).
_ERROR = "pycti/api/opencti_api_client.py, query(): raise ValueError(value_error)"
_BODY = "pycti/api/opencti_api_client.py, query(): raise ValueError(r.text)"
_INIT = "pycti/api/opencti_api_client.py, OpenCTIApiClient.__init__()"
_SEND = "pycti/connector/opencti_connector_helper.py, send_stix2_bundle()"


def _is_amqp_error(exc: BaseException) -> bool:
    """An error of pika, the amqp protocol's client. pika is installed with pycti (the ``opencti``
    extra), so it is imported here, not with this module: the spool commands run without it."""
    try:
        from pika.exceptions import AMQPError
    except ImportError:
        return False
    return isinstance(exc, AMQPError)


def _row(verdict: Verdict, pattern: str, raised_by: str, text_from: str) -> Pattern:
    return Pattern(verdict, re.compile(pattern, re.IGNORECASE), raised_by, text_from)


#: Every text the uploader reads, first match wins: "Invalid connector" is wrapped by the
#: platform in "Invalid bundle", so "forgotten" comes before "permanent".
PATTERNS: tuple[Pattern, ...] = (
    _row("schema", r"\bcannot query field\b", _ERROR, "graphql-js FieldsOnCorrectTypeRule"),
    _row("schema", r"\bunknown argument\b", _ERROR, "graphql-js KnownArgumentNamesRule"),
    _row("schema", r"\bis not defined by type\b", _ERROR, "graphql-js coerceInputValue"),
    _row("schema", r"\bunknown type\b", _ERROR, "graphql-js KnownTypeNamesRule"),
    _row("forgotten", r"\binvalid connector\b", _ERROR, "opencti-graphql sendStixBundle"),
    _row("forgotten", r"\bno connector found\b", _ERROR, "opencti-graphql pingConnector"),
    _row("auth", r"\byou must be logged in\b", _ERROR, "opencti-graphql AuthRequired"),
    _row("auth", r"\bauth_?required\b", _ERROR, "opencti-graphql AUTH_REQUIRED"),
    _row("auth", r"\byou are not allowed\b", _ERROR, "opencti-graphql ForbiddenAccess"),
    _row("auth", r"\bforbidden(_access)?\b", _BODY, "a proxy's 403 page, FORBIDDEN_ACCESS"),
    _row("auth", r"\bunauthori[sz]ed\b", _BODY, "a proxy's 401 page"),
    _row("auth", r"\bauthorization required\b", _BODY, "nginx's 401 page"),
    _row("auth", r"\ba token must be set\b", _INIT, 'raise ValueError("A TOKEN must be set")'),
    _row(
        "too-large",
        r"\b(request entity too large|PayloadTooLargeError)\b",
        _BODY,
        "the platform's 413 (express body-parser's PayloadTooLargeError)",
    ),
    _row("transient", r"\bnot reachable\b", _INIT, "OpenCTI API is not reachable"),
    _row("transient", r"\b(timeout|timed out)\b", _BODY, "504 pages, LockTimeoutError"),
    _row("transient", r"\btoo many requests\b", _BODY, "a 429 page"),
    _row("transient", r"\block(_error)?\b", _ERROR, "opencti-graphql LOCK_ERROR"),
    _row("transient", r"\bdatabase(_error)?\b", _ERROR, "opencti-graphql DATABASE_ERROR"),
    _row("transient", r"\bbad gateway\b", _BODY, "a 502 page"),
    _row("transient", r"\bservice (temporarily )?unavailable\b", _BODY, "a 503 page"),
    _row("permanent", r"\binvalid (stix )?bundle\b", _ERROR, "opencti-graphql sendStixBundle"),
    _row("permanent", r"\bnothing to import\b", _SEND, 'raise ValueError("Nothing to import")'),
    _row("permanent", r"\btoo large\b", _ERROR, "a platform refusing a bundle's size"),
)


def verdict(text: str, among: frozenset[Verdict] | None = None) -> Verdict | None:
    """The verdict of the first row of :data:`PATTERNS` (of ``among``) that matches ``text``."""
    for row in PATTERNS:
        if (among is None or row.verdict in among) and row.regex.search(text):
            return row.verdict
    return None


def classify(exc: BaseException, work_id: str | None, token: str) -> ImportFailure:
    """Map what pycti raised to our error tree, without ``token`` in the text."""
    if isinstance(exc, ImportFailure):
        if work_id is not None and exc.work_id is None:
            exc.work_id = work_id
        return exc
    if isinstance(exc, QueuePaused):
        return TransientImportError(str(exc), work_id=work_id)
    text = redact(describe(exc), token)
    if isinstance(exc, requests.RequestException):
        return TransientImportError(f"OpenCTI not reachable: {text}", work_id=work_id)
    if _is_amqp_error(exc):
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
        if code in _PERMANENT_CODES and verdict(text, _FORGOTTEN) is None:
            return PermanentImportError(f"OpenCTI refused the bundle: {text}", work_id=work_id)
    return _by_text(exc, text, work_id)


_FORGOTTEN: frozenset[Verdict] = frozenset({"forgotten"})
_SCHEMA: frozenset[Verdict] = frozenset({"schema"})
_NOT_SCHEMA: frozenset[Verdict] = frozenset(
    {"auth", "forgotten", "too-large", "transient", "permanent"}
)


def _by_text(exc: BaseException, text: str, work_id: str | None) -> ImportFailure:
    found = verdict(text, _NOT_SCHEMA)
    if found == "forgotten":
        # registered again by uploader.importing.opencti, so not final
        return TransientImportError(f"OpenCTI does not know the connector: {text}", work_id=work_id)
    if found == "auth":
        return auth_refusal("", text[:300], work_id=work_id)
    if found == "too-large":
        return PermanentImportError(
            f"OpenCTI refused the push as too large ({text[:300]}); lower "
            "UPLOADER_MAX_PUSH_BYTES to the platform's APP__MAX_PAYLOAD_BODY_SIZE and replay",
            work_id=work_id,
        )
    if found == "transient":
        return TransientImportError(f"OpenCTI is not ready: {text}", work_id=work_id)
    if found == "permanent":
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
    return loose and verdict(message, _SCHEMA) is not None


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
    return graphql_error(exc) and verdict(describe(exc), _FORGOTTEN) is not None


def redact(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


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
    """Whether pycti's session could not reach the platform (no answer at all)."""
    return isinstance(exc, requests.ConnectionError | requests.Timeout)
