"""Logging set-up, called by the CLIs only.

Text lines are ``time level logger message key=value ...`` where the key/values are the record's
``extra=`` context. With ``OPENCTI_JSON_LOGGING`` each line is one JSON object instead, with
``timestamp``, ``level``, ``logger``, ``message`` and the same context fields (python-json-logger,
the library pycti's own JSON logs use: ``pycti/utils/opencti_logger.py``). Every registered secret
(API key, OpenCTI token) is masked in the final text of every line, whatever logger produced it
(pycti and urllib3 included): defence in depth on top of never logging secrets in the first place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

# python-json-logger 3 and 4 (pycti 7 pins ~=4.0.0) moved the formatter to pythonjsonlogger.json;
# 2.x (pycti 6 pins ~=2.0.4, pycti/utils/opencti_logger.py) has only pythonjsonlogger.jsonlogger.
# The tests pass with 2.0.7 and 4.0.0.
try:
    from pythonjsonlogger.core import RESERVED_ATTRS
    from pythonjsonlogger.json import JsonFormatter
except ImportError:
    from pythonjsonlogger.jsonlogger import (  # type: ignore[no-redef,attr-defined,unused-ignore]
        RESERVED_ATTRS,
        JsonFormatter,
    )

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()) | {
    "message",
    "asctime",
    "taskName",
}

MASK = "***"


def level_number(name: str) -> int:
    """The logging level for a ``CONNECTOR_LOG_LEVEL`` value (debug|info|warn|error)."""
    try:
        return _LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}; use debug, info, warn or error") from None


class RedactingFormatter(logging.Formatter):
    """Formats ``extra=`` context as key=value and masks every secret in the result."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        # Secrets shorter than 4 characters would mask ordinary words; they are refused by config.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add_secret(self, secret: str) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")
        ]
        if context:
            text = f"{text} {' '.join(context)}"
        return self.redact(text)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(self._secrets)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


class RedactingJsonFormatter(JsonFormatter):
    """One JSON object per record: timestamp, level, logger, message and the ``extra=`` context,
    with every secret masked in the serialised line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(  # type: ignore[no-untyped-call,unused-ignore]
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            # ISO 8601 in UTC from the record's own creation time.
            timestamp=True,
            reserved_attrs=(*RESERVED_ATTRS, "taskName"),
        )
        self._text = RedactingFormatter(secrets)

    def add_secret(self, secret: str) -> None:
        self._text.add_secret(secret)

    def format(self, record: logging.LogRecord) -> str:
        return redact_json(self._text, str(super().format(record)))

    def add_fields(
        self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_record, record, message_dict)
        # Same rule as the text lines: underscore-prefixed attributes are private to a handler.
        for key in [k for k in log_record if k.startswith("_")]:
            del log_record[key]


def redact_json(formatter: RedactingFormatter, line: str) -> str:
    """Mask each secret of ``formatter`` in a JSON line, also in its JSON-escaped spellings.

    Escaping is per character, so a secret inside a longer string is escaped to its own escaped
    form: a secret with a quote, a backslash or a non-ASCII character is masked too.
    """
    text = formatter.redact(line)
    for secret in formatter.secrets:
        for escaped in {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}:
            if escaped != secret:
                text = text.replace(escaped, MASK)
    return text


def configure_logging(
    level: str,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    *,
    json_lines: bool = False,
) -> RedactingFormatter | RedactingJsonFormatter:
    """Send every logger's records to ``stream`` (stderr) at ``level``, masking ``secrets``.

    ``json_lines`` writes one JSON object per line (``OPENCTI_JSON_LOGGING``). Returns the
    formatter so a caller can register a secret learned later (``add_secret``).
    """
    formatter: RedactingFormatter | RedactingJsonFormatter = (
        RedactingJsonFormatter(secrets) if json_lines else RedactingFormatter(secrets)
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
    # urllib3 logs every retry at WARNING, which is what we want; its DEBUG lines carry full URLs.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, level_number(level)))
    return formatter


@contextlib.contextmanager
def records_through(handler: logging.Handler) -> Iterator[None]:
    """While inside, the root logger's records go to ``handler`` instead of its own handlers.

    For a live display (a progress bar) that must print log lines itself so that they never
    share a line with it. ``handler`` gets the formatter of the handler it stands in for, so
    secrets stay masked and the line format stays the one configured.
    """
    root = logging.getLogger()
    previous = list(root.handlers)
    if previous and previous[0].formatter is not None:
        handler.setFormatter(previous[0].formatter)
    for old in previous:
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for old in previous:
            root.addHandler(old)
