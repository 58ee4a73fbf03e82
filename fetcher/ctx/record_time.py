"""Record times of the objects listing (stix2arango's ``_record_modified``), as the strings the
listing compares: read, and moved just below or a while before another.

``_record_modified`` is ``%Y-%m-%dT%H:%M:%S.%fZ`` (stix2arango), except where CTX's
``update_identities`` (``server/models.py``) wrote ``isoformat()`` plus ``Z`` for a whole second.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.timestamps import STIX_TIME_FORMAT, format_stix_time

_RECORD_TIME_LENGTH = len("2024-01-01T00:00:00.000000Z")
_WHOLE_SECOND_LENGTH = len("2024-01-01T00:00:00Z")


def parse_record_time(value: str) -> datetime | None:
    """A ``_record_modified`` in stix2arango's format as a UTC datetime, else None."""
    if len(value) != _RECORD_TIME_LENGTH:
        return None
    try:
        return datetime.strptime(value, STIX_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _whole_second(value: str) -> datetime | None:
    """A record time ``update_identities`` wrote for a whole second (``…:05Z``), else None."""
    if len(value) != _WHOLE_SECOND_LENGTH or not value.endswith("Z"):
        return None
    return parse_record_time(f"{value[:-1]}.000000Z")


def just_below(value: str) -> str | None:
    """The greatest record time strictly below ``value`` (one microsecond earlier).

    Asking ``added_after`` with it serves the records *at* ``value`` again. CTX's
    ``update_identities`` (``server/models.py``) writes ``isoformat()`` plus ``Z``, so a whole
    second reads ``…:05Z``, which sorts after ``…:05.999999Z``: just below it is that time. None
    when ``value`` is in neither format: then no string is known to sit just below it.
    """
    if _whole_second(value) is not None:
        return f"{value[:-1]}.999999Z"
    when = parse_record_time(value)
    if when is None or when == datetime.min.replace(tzinfo=UTC):
        return None
    return format_stix_time(when - timedelta(microseconds=1))


def earlier(value: str, by: timedelta) -> str:
    """The record time ``by`` before ``value``; ``value`` itself when it cannot be read as one."""
    when = parse_record_time(value) or _whole_second(value)
    if when is None or not by:
        return value
    return format_stix_time(when - by)
