"""Logging set-up, called by the CLIs only.

Lines are ``time level logger message key=value ...`` where the key/values are the record's
``extra=`` context. Every registered secret (API key, OpenCTI token) is masked in the final text of
every line, whatever logger produced it (pycti and urllib3 included): defence in depth on top of
never logging secrets in the first place.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO

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

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def configure_logging(
    level: str, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> RedactingFormatter:
    """Send every logger's records to ``stream`` (stderr) at ``level``, masking ``secrets``.

    Returns the formatter so a caller can register a secret learned later.
    """
    formatter = RedactingFormatter(secrets)
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
