"""Timestamps as STIX 2.1 writes them (§3.2: UTC, ``Z``), the one format both halves write.

stix2arango stamps its records in the same format (``_record_modified``,
``services/arangodb_service.py``), which the fetcher's cursors keep as they are served.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

#: Microseconds always: equal instants give equal strings that sort as the instants do.
STIX_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_stix_time(when: datetime) -> str:
    """``when`` in :data:`STIX_TIME_FORMAT` (converted to UTC)."""
    return when.astimezone(UTC).strftime(STIX_TIME_FORMAT)


def now_stix_time() -> str:
    """The current time in :data:`STIX_TIME_FORMAT`."""
    return format_stix_time(datetime.now(UTC))


def parse_stix_timestamp(value: str) -> datetime:
    """Parse a STIX/CTX timestamp (``2024-05-01T10:00:00.123Z``, any sub-second digits) to UTC."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # fromisoformat takes at most 6 fractional digits; STIX allows more, which carry no order here
    # beyond microseconds.
    match = re.match(r"^(.*?\.\d{6})\d+(.*)$", text)
    if match:
        text = match.group(1) + match.group(2)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a timestamp: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
