"""The CTX server's queries, answered from the stand-in's records (:mod:`tests.standins.ctx`).

Query parameters as dogesec_commons' ``ArangoDBHelper`` reads them (``query_as_bool``,
``query_as_array``, ``get_limit``); the listing (``server/arango_helpers.py``
``make_objects_query``/``get_objects``), the bundle (``get_bundle``, ``make_bundle_query``,
``make_cursor_for_next_page``, the bundle cursor's encoding) and the older page-style
``semantic_search``. Which behaviour follows which line of the server: the docstring of
:mod:`tests.standins.ctx`.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import json
import struct
from bisect import bisect_right
from itertools import islice
from typing import Any

from tests.standins.ctx_records import (
    Collection,
    Feed,
    Run,
    strip,
)

#: settings.py ``MAXIMUM_PAGE_SIZE`` / ``DEFAULT_PAGE_SIZE``.
MAXIMUM_PAGE_SIZE = 50
DEFAULT_PAGE_SIZE = 50
BUNDLE2_CURSOR_VERSION = 1
_CURSOR_HEAD = struct.Struct("!BIIIQ")
#: ``ALL_SEARCH_TYPES`` of the arango_helpers.py that ``semantic_search`` used (page style), with
#: dogesec_commons' ``SCO_TYPES``.
ALL_SEARCH_TYPES = frozenset(
    {"attack-pattern", "course-of-action", "identity", "marking-definition", "location"}
    | {"software", "campaign", "intrusion-set", "malware", "tool", "x-mitre-data-component"}
    | {"x-mitre-data-source", "x-mitre-matrix", "x-mitre-tactic", "x-mitre-asset"}
    | {"x-mitre-detection-strategy", "x-mitre-analytic", "weakness", "grouping"}
    | {"x-mitre-collection", "relationship", "sighting", "report", "indicator"}
    | {"artifact", "autonomous-system", "bank-account", "bank-card", "cryptocurrency-transaction"}
    | {"cryptocurrency-wallet", "directory", "domain-name", "email-addr", "email-message", "file"}
    | {"ipv4-addr", "ipv6-addr", "mac-addr", "mutex", "network-traffic", "phone-number"}
    | {"process", "url", "user-account", "user-agent", "windows-registry-key", "x509-certificate"}
)


class ServerError(Exception):
    """An exception the real server does not handle: Django answers 500."""


# Query parameters, as dogesec_commons' ArangoDBHelper reads them ---------------------------------


def query_as_bool(q: dict[str, str], key: str, default: bool) -> bool:
    value = q.get(key)
    if not value:
        return default
    return value.lower() in ("true", "yes", "1", "y")


def query_as_array(q: dict[str, str], key: str) -> list[str]:
    value = q.get(key)
    return value.split(",") if value else []


def get_limit(q: dict[str, str]) -> int:
    limit = DEFAULT_PAGE_SIZE
    if q.get("limit") is not None:
        with contextlib.suppress(TypeError, ValueError):
            limit = int(q["limit"])
    return max(1, min(MAXIMUM_PAGE_SIZE, limit))


def positive_int(text: str | None, cutoff: int | None = None, default: int = 1) -> int:
    with contextlib.suppress(TypeError, ValueError):
        value = int(text)  # type: ignore[arg-type]
        if value <= 0:
            return default
        return min(value, cutoff) if cutoff else value
    return default


def encode_bundle_cursor(cursor: dict[str, Any] | None) -> str | None:
    """``struct "!BIIIQ"`` (version 1, the lengths of k1, kid, k2, index) + the three UTF-8 strings,
    urlsafe base64 without padding."""
    if not cursor:
        return None
    values = [
        b"" if cursor.get(k) is None else str(cursor[k]).encode() for k in ("k1", "kid", "k2")
    ]
    head = _CURSOR_HEAD.pack(
        BUNDLE2_CURSOR_VERSION, *map(len, values), int(cursor.get("index") or 0)
    )
    return base64.urlsafe_b64encode(head + b"".join(values)).decode("ascii").rstrip("=")


def decode_bundle_cursor(cursor: str | None) -> dict[str, Any]:
    if not cursor:
        return {}
    payload = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    version, *lengths, index = _CURSOR_HEAD.unpack(payload[: _CURSOR_HEAD.size])
    if version != BUNDLE2_CURSOR_VERSION:
        raise ValueError(f"Unsupported bundle cursor version: {version}")
    values: list[str | None] = []
    offset = _CURSOR_HEAD.size
    for length in lengths:
        values.append(payload[offset : offset + length].decode() or None)
        offset += length
    return {"k1": values[0], "kid": values[1], "k2": values[2], "index": int(index)}


# The server's queries --------------------------------------------------------------------------


def _after(run: Run | None, added_after: str | None, limit: int) -> list[dict[str, Any]]:
    if run is None:
        return []
    start = 0 if added_after is None else bisect_right(run.times, added_after)
    return run.records[start : start + limit]


def make_objects_page(
    feed: Feed, types: list[str] | None, added_after: str | None, limit: int, refs: bool
) -> list[tuple[Collection, dict[str, Any]]]:
    """``make_objects_query``: the two limited halves, then their union sorted."""
    page: list[tuple[Collection, dict[str, Any]]] = []
    if types is None or "relationship" in json.dumps(types):
        edges = feed.edge.runs().get("refs" if refs else False)
        page += [(feed.edge, r) for r in _after(edges, added_after, limit)]
    runs = feed.vertex.runs()
    if types is None:
        vertices = _after(runs["all"], added_after, limit)
    else:
        # The server filters by type, sorts by _record_modified and limits (make_objects_query).
        # Each per-type run is in that order already, so merging them gives the same page as
        # sorting their union again, without re-sorting ~1,000 records on every request.
        found = [_after(runs.get(("type", t)), added_after, limit) for t in set(types)]
        vertices = list(islice(heapq.merge(*found, key=feed.vertex.order_key), limit))
    page += [(feed.vertex, r) for r in vertices]
    page.sort(key=lambda item: item[0].order_key(item[1]))
    return page


def get_objects(feed: Feed, q: dict[str, str]) -> bytes:
    page = make_objects_page(
        feed,
        query_as_array(q, "types") or None,
        q.get("added_after") or None,
        get_limit(q),
        query_as_bool(q, "show_embedded_refs", False),
    )
    nxt = page[-1][1]["_record_modified"] if page else None
    return _envelope(page, nxt, len(page))


def _envelope(
    objects: list[tuple[Collection, dict[str, Any]]], nxt: str | None, count: int
) -> bytes:
    parts = b", ".join(collection.json(record) for collection, record in objects)
    tail = f'], "next": {json.dumps(nxt)}, "count": {count}}}'.encode()
    return b'{"objects": [' + parts + tail


def _level1(
    feed: Feed,
    obj_id: str,
    limit: int,
    k1: Any,
    cursor: bool,
    types: list[str] | None,
    refs: set[Any],
) -> list[list[Any]]:
    ends = feed.edge.ends()
    found: list[tuple[tuple[str, str], list[Any]]] = []
    for index, other, type_field in (
        ("to", "source_ref", "_source_type"),
        ("from", "target_ref", "_target_type"),
    ):
        taken = 0
        for e in ends[index].get(obj_id, ()):
            if taken == limit:
                break
            if e.get("_is_ref") not in refs:
                continue
            # AQL: any string is greater than null, so a cursor without k1 filters nothing.
            if cursor and k1 is not None and not e["_record_modified"] > k1:
                continue
            if types is not None and e.get(type_field) not in types:
                continue
            found.append(
                (feed.edge.order_key(e), [e["_record_modified"], e.get("id"), e.get(other)])
            )
            taken += 1
    found.sort(key=lambda item: item[0])
    return [edge for _, edge in found[:limit]]


def _level2(
    feed: Feed,
    level1: list[list[Any]],
    limit: int,
    cursor: dict[str, Any],
    types: list[str] | None,
    refs: set[Any],
) -> list[list[Any]]:
    frm = feed.edge.ends()["from"]

    def edges(source: Any, k2: Any, check_k2: bool) -> list[list[Any]]:
        out = []
        for e in frm.get(str(source), ()):
            if e.get("_is_ref") not in refs or (
                types is not None and e.get("_target_type") not in types
            ):
                continue
            if check_k2 and k2 is not None and not e["_record_modified"] > k2:
                continue
            out.append(
                [e["_record_modified"], e.get("id"), e.get("source_ref"), e.get("target_ref")]
            )
        return out

    with_cursor = edges(cursor["kid"], cursor.get("k2"), True)[:limit] if cursor.get("kid") else []
    values = sorted({str(edge[2]) for edge in level1})
    without = [e for v in values for e in edges(v, None, False)][:limit]
    return sorted(with_cursor + without, key=lambda e: (str(e[2]), e[0]))[:limit]


def make_cursor_for_next_page(
    level1: list[list[Any]], level2: list[list[Any]], limit: int
) -> tuple[str | None, list[Any]]:
    by_source: dict[Any, list[list[Any]]] = {}
    for edge in level2:
        by_source.setdefault(edge[2], []).append(edge)
    ids: list[Any] = []
    seen: set[Any] = set()
    cursor: dict[str, Any] | None = None
    pairs = 0

    def add(object_id: Any) -> None:
        if object_id is not None and object_id not in seen:
            seen.add(object_id)
            ids.append(object_id)

    for edge in level1:
        add(edge[-1])
        add(edge[1])
        cursor = {"k1": edge[0], "kid": edge[-1], "k2": None}
        pairs += 1
        for e2 in by_source.get(edge[2], []):
            add(e2[-1])
            add(e2[1])
            pairs += 1
            cursor["k2"] = e2[0]
            if pairs >= limit:
                break
        if pairs >= limit:
            break
    return encode_bundle_cursor(cursor if pairs >= limit else None), ids


def get_bundle(feed: Feed, obj_id: str, q: dict[str, str]) -> bytes:
    limit = get_limit(q)
    try:
        cursor = decode_bundle_cursor(q.get("cursor"))
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ServerError(str(exc)) from exc
    refs: set[Any] = {False, None}
    if query_as_bool(q, "show_embedded_refs", True):
        refs.add(True)
    types = query_as_array(q, "types") or None
    secondary_types = query_as_array(q, "secondary_types") or types
    level1 = _level1(feed, obj_id, limit, cursor.get("k1"), bool(cursor), types, refs)
    level2: list[list[Any]] = []
    if query_as_bool(q, "secondary_relations", False):
        level2 = _level2(feed, level1, limit, cursor, secondary_types, refs)
    wanted = {obj_id, *(e[1] for e in level1), *(e[-1] for e in level1)}
    wanted |= {v for e in level2 for v in e[1:]}
    object_map: dict[Any, tuple[Collection, dict[str, Any]]] = {}
    for collection in (feed.vertex, feed.edge):
        found = [r for i in wanted for r in collection.by_id.get(i, ())]
        for record in sorted(found, key=lambda r, c=collection: c.seq[r["_key"]]):
            object_map[record.get("id")] = (collection, record)
    nxt, ids = make_cursor_for_next_page(level1, level2, limit)
    if not cursor:
        ids.insert(0, obj_id)
    return _envelope([object_map[i] for i in ids if i in object_map], nxt, len(ids))


def semantic_search(feed: Feed, q: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """The page-number listing of d59a89f2 (see the module docstring)."""
    page = positive_int(q.get("page"))
    if page >= 2**32:
        return 400, {"detail": f"invalid page `{page}`"}
    size = positive_int(q.get("page_size"), cutoff=MAXIMUM_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)
    since = q.get("updated_since")
    refs = query_as_bool(q, "show_embedded_refs", False)
    types = ALL_SEARCH_TYPES
    if wanted := query_as_array(q, "types"):
        types = types & set(wanted)
    hits = []
    for collection in (feed.vertex, feed.edge):
        for record in collection.runs()["all"].records:
            if not record.get("_is_latest") or record.get("type") not in types:
                continue
            if (since and not record["_record_modified"] > since) or (
                not refs and record.get("_is_ref") is True
            ):
                continue
            hits.append((collection, record))
    field, _, direction = q.get("sort", "modified_descending").rpartition("_")
    if field in ("modified", "created", "name", "type") and direction in (
        "ascending",
        "descending",
    ):
        descending = direction == "descending"
        # AQL sorts null below every string; ties in no defined order (a hash, as the listing).
        hits.sort(key=lambda h: h[0].tie[h[1]["_key"]])
        hits.sort(
            key=lambda h: (h[1].get(field) is not None, str(h[1].get(field))), reverse=descending
        )
    chunk = hits[(page - 1) * size : page * size]
    return 200, {
        "page_size": DEFAULT_PAGE_SIZE,
        "page_number": page,
        "page_results_count": len(chunk),
        "total_results_count": len(hits),
        "objects": [strip(record) for _, record in chunk],
    }
