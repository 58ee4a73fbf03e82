"""What the fetcher needs to know of a STIX object: its canonical JSON, what it refers to, which
version is newer, and whether it is a storage artefact of stix2arango rather than intelligence.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from shared.timestamps import STIX_TIME_FORMAT, parse_stix_timestamp

JSONDict = dict[str, Any]

#: ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``: one encoder for
#: every call, since ``dumps`` with any non-default option builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(obj: Any) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, no insignificant whitespace."""
    return _CANONICAL.encode(obj).encode("utf-8")


#: stix2arango's namespace for the ids of the relationships it makes from embedded references
#: (``stix2arango/config.py`` ``namespace``; ``utils.create_relationship_obj`` names each one
#: ``relationship--uuid5(namespace, "<relationship_type>+<source>+<target>")``).
STIX2ARANGO_NAMESPACE = uuid.UUID("72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4")
#: Where the version digit of the uuid sits in ``relationship--xxxxxxxx-xxxx-Vxxx-…``.
_UUID_VERSION_AT = len("relationship--xxxxxxxx-xxxx-")

# STIX 2.1 §3.1: reference properties end in ``_ref`` or ``_refs``; they may sit inside lists of
# dicts (e.g. ``granular_markings[].marking_ref``).
_REF_KEY = re.compile(r"^[a-z0-9_]+_refs?$")
_REF_SUFFIXES = ("_ref", "_refs")
#: Containers are written with what they contain; a member's own ``object_refs`` is not followed,
#: or one report would carry every report it mentions.
_NOT_FOLLOWED = frozenset({"object_refs"})
#: STIX 2.1 §3.2 timestamps as servers write them (UTC, ``Z``, any number of sub-second digits):
#: normalised by slicing, which costs a tenth of parsing and formatting them; others are parsed.
_UTC_STAMP = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d+))?Z")


def is_storage_artefact(obj: JSONDict) -> bool:
    """True for a relationship stix2arango made from an embedded reference (``_is_ref`` edges).

    The server drops ``_is_ref`` from what it serves, but the id is derived from the type and the
    two ends, so it can be recognised: ``stix2arango/utils.py`` ``create_relationship_obj``.
    """
    if obj.get("type") != "relationship":
        return False
    kind, source, target = (
        obj.get("relationship_type"),
        obj.get("source_ref"),
        obj.get("target_ref"),
    )
    if not all(isinstance(v, str) for v in (kind, source, target)):
        return False
    object_id = obj.get("id")
    # A uuid5 has version digit 5 (RFC 9562 §5.5): any other id is settled without hashing.
    if not isinstance(object_id, str) or object_id[_UUID_VERSION_AT : _UUID_VERSION_AT + 1] != "5":
        return False
    expected = uuid.uuid5(STIX2ARANGO_NAMESPACE, f"{kind}+{source}+{target}")
    return object_id == f"relationship--{expected}"


def references(obj: JSONDict, *, follow_contents: bool = True) -> Iterator[str]:
    """Every id ``obj`` refers to through ``*_ref`` / ``*_refs`` properties, nested ones included.

    ``follow_contents=False`` leaves out ``object_refs`` (what a container holds).
    """
    stack: list[Any] = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if key.endswith(_REF_SUFFIXES) and _REF_KEY.match(key):
                    if not follow_contents and key in _NOT_FOLLOWED:
                        continue
                    if isinstance(item, str):
                        yield item
                    elif isinstance(item, list):
                        yield from (ref for ref in item if isinstance(ref, str))
                elif isinstance(item, dict | list):
                    stack.append(item)
        elif isinstance(value, list):
            stack.extend(item for item in value if isinstance(item, dict | list))


def normal_time(value: object) -> str:
    """A STIX timestamp in one fixed format with six sub-second digits, '' if it is not one.

    Equal instants give equal strings and the strings sort as the instants do.
    """
    if not isinstance(value, str):
        return ""
    match = _UTC_STAMP.fullmatch(value)
    if match is None:
        try:
            return parse_stix_timestamp(value).strftime(STIX_TIME_FORMAT)
        except ValueError:
            return ""
    day, clock, fraction = match.groups()
    try:
        datetime.fromisoformat(f"{day}T{clock}")  # the calendar check: no 2024-02-30
    except ValueError:
        return ""
    return f"{day}T{clock}.{(fraction or '')[:6]:0<6}Z"


def version_key(obj: JSONDict, served: str) -> str:
    """A string that orders the versions of one STIX id: the newer version has the greater key.

    STIX 2.1 §3.2: ``modified`` tells versions of an object apart, so it decides. Records of one
    id share a ``modified`` only when the producer broke that rule; objects without ``modified``
    (SCOs, §6) have no version of their own. In both cases the record the server stored later
    wins: stix2arango stores a changed object as a new record with a later ``_record_modified``
    (``services/arangodb_service.py`` ``insert_several_objects``) and takes the latest record as
    the latest version when ``modified`` cannot tell (``services/version_annotator.py``). The
    server never serves ``_record_modified``; ``served`` (:func:`served_position`) is where the
    listing served the record, which orders records as their ``_record_modified`` does. The
    content's digest, appended by the caller, settles what is still equal.
    """
    modified = normal_time(obj.get("modified"))
    return f"{modified}|{served}"


def served_position(page: str, index: int) -> str:
    """Where a record was served: its page's position (:attr:`fetcher.ctx.walk.Step.served`) and its
    place on the page.

    A page is sorted by ``_record_modified`` (``arango_helpers.py`` ``get_objects``: both halves
    ``SORT _record_modified ASC``, then sorted together), so of two records on one page the later
    one was stored later. Between pages, the page served from the later ``added_after`` has the
    greater (or equal) ``next``: with a fixed set of records each half's end only grows with its
    start. So ``(next, added_after, place)`` orders every serving of two versions of one id as
    their record times do, whichever segment served them and in which order they were applied.
    """
    return f"{page}|{index:06d}"


def object_time(obj: JSONDict) -> str:
    """``modified`` or else ``created`` in one fixed format, '' when it has neither."""
    return normal_time(obj.get("modified")) or normal_time(obj.get("created"))
