"""A stand-in for the Cyber Threat Exchange API on 127.0.0.1, built from the server's own code.

A real ``ThreadingHTTPServer`` in a background thread. Its data are stix2arango records made only
by simulated uploads (:mod:`tests.standins.ctx_world` says which server code each step follows);
its answers (:mod:`tests.standins.ctx_queries`) follow ``muchdogesec/cyberthreatexchange`` (newest
code first):

* **Listing** ``v1/feeds/{feed}/objects/?added_after=&limit=&types=&show_embedded_refs=``:
  ``server/arango_helpers.py`` ``make_objects_query``/``get_objects``/``get_limit``. ``limit``:
  an int clamped to 1…50 (``MAXIMUM_PAGE_SIZE``), anything else ``DEFAULT_PAGE_SIZE`` (50). Two
  halves, each ``FILTER _record_modified > added_after`` (strings) ``SORT _record_modified ASC
  LIMIT limit``: the edge collection (relationships only; only when ``types`` is absent or its JSON
  text contains ``relationship``, as AQL's string ``CONTAINS`` sees an array; ``_is_ref IN
  [False]``, or ``[True, False]`` with ``show_embedded_refs``, which dogesec_commons'
  ``query_as_bool`` reads as true for ``true``/``yes``/``1``/``y``) and the vertex collection
  (everything else, sightings too; ``type IN types``). Their union sorted by ``_record_modified``;
  ties come back in an order no client can rely on (here: a hash of ``_key``, never the id). Every
  stored record is listed (all versions; ``_is_latest`` is not filtered). No key starting with
  ``_``. Answer ``{"objects": [...], "next": <the page's greatest _record_modified, a bare string,
  or null when the page is empty>, "count": n}``. A page holds up to 2×limit objects; when one half
  is full, its records between its last one and ``next`` are on no page at all.
* **Bundle** ``v1/feeds/{feed}/objects/{id}/bundle/?limit=&cursor=&types=&show_embedded_refs=
  &secondary_relations=&secondary_types=``: ``get_bundle``, ``make_bundle_query``,
  ``make_cursor_for_next_page``, ``encode_bundle_cursor``/``decode_bundle_cursor``.
  ``show_embedded_refs`` defaults to **true** here (``is_ref_matcher`` ``[False, None]`` + ``True``).
  Level-1 edges: the edges whose ``target_ref`` is the object and those whose ``source_ref`` is,
  each filtered (``_record_modified > cursor.k1``, the other end's type in ``types``) and cut at
  ``limit`` *without a sort*, i.e. in the order of the persistent index ArangoDB uses
  (``relation_to``/``relation_from``: by the other end's id), then together sorted by
  ``_record_modified`` and cut at ``limit``. Objects: every record (all versions) of the vertex and
  then the edge collection whose id is among the object, the level-1 edges and their other ends,
  each collection in insertion (``_key``) order, made a dict, so the last record of an id wins: a
  member can come back in a version that is not its latest. Page 1 starts with the object; then per
  level-1 edge its other end and the edge. ``next``: the packed cursor, null when fewer than
  ``limit`` edges came back; ``count``: the number of ids, missing records included (they are
  silently skipped). An unknown object id: ``200 {"objects": [], "next": null, "count": 1}``.
  A cursor that does not decode is an unhandled error (500).
* **Page-number listing** (``style = "page"``): the listing of the views.py at d59a89f2, i.e.
  ``semantic_search`` of the arango_helpers.py of that time: ``page``/``page_size`` (dogesec_commons
  ``positive_int``, clamped to 50), ``updated_since`` (``_record_modified >``, strings), latest
  versions only, no synthetic edges unless ``show_embedded_refs``, only types in that version's
  ``ALL_SEARCH_TYPES`` (so no threat-actor, vulnerability, note, extension-definition, payment-card…),
  sorted by ``modified`` descending (objects without ``modified`` last); envelope ``{page_size,
  page_number, page_results_count, total_results_count, objects}`` whose ``page_size`` is always
  ``DEFAULT_PAGE_SIZE`` (``execute_query`` passes the class attribute, not the request's size). The
  bundle stays as above: at d59a89f2 the bundle was already the cursor one (``get_bundle2``).
* **Hosted layer** (not in the open-source code): the ``v1/`` prefix, header ``API-KEY`` (401
  without it), ``v1/subscriptions/`` (page-number envelope, list key ``results``, one inactive
  subscription), ``v1/feeds/``, ``v1/feeds/{id}/``, 403 for a feed not subscribed or not active.

Tests inject faults (:meth:`CTXStandIn.inject`), change the data only through uploads
(:meth:`~CTXStandIn.update_report`, :meth:`~CTXStandIn.upload_old_version`,
:meth:`~CTXStandIn.add_objects`, :meth:`~CTXStandIn.add_raw`, :meth:`~CTXStandIn.upload`) or the
server's own in-place update (:meth:`~CTXStandIn.touch_record`), or let a
:class:`tests.standins.ctx_live.LiveWriter` upload while it serves (live mode), read ground truth
(:meth:`~CTXStandIn.latest_objects`, :meth:`~CTXStandIn.records`, :meth:`~CTXStandIn.related_ids`)
and read :attr:`CTXStandIn.requests`.

Standalone, for demos::

    python -m tests.standins.ctx --port 8765 --feeds 3 --reports 30
"""

from __future__ import annotations

import argparse
import copy
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.standins.ctx_producer import ALL_KINDS, CUSTOM_KINDS, SCO_KINDS, SDO_KINDS
from tests.standins.ctx_queries import (
    DEFAULT_PAGE_SIZE,
    MAXIMUM_PAGE_SIZE,
    ServerError,
    decode_bundle_cursor,
    encode_bundle_cursor,
    get_bundle,
    get_objects,
    positive_int,
    semantic_search,
)
from tests.standins.ctx_records import (
    S2A_IDENTITY_ID,
    TS_FORMAT,
    Feed,
    refs_of,
    strip,
    synthetic_id,
    ts,
)
from tests.standins.ctx_world import World

__all__ = [
    "ALL_KINDS",
    "CUSTOM_KINDS",
    "DEFAULT_API_KEY",
    "S2A_IDENTITY_ID",
    "SCO_KINDS",
    "SDO_KINDS",
    "TS_FORMAT",
    "CTXStandIn",
    "Fault",
    "Feed",
    "Request",
    "decode_bundle_cursor",
    "encode_bundle_cursor",
    "refs_of",
    "synthetic_id",
    "ts",
]

DEFAULT_API_KEY = "ctx-standin-key-6f1d2a9b8c"


@dataclass
class Fault:
    """A fault served instead of (or before) the normal answer, ``times`` times."""

    kind: str  # "status" | "latency" | "drop" | "malformed" | "redirect" | "truncated"
    path_contains: str = ""
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    location: str = ""
    #: "truncated": the Content-Length announced; the body is cut short after 64 KiB and closed.
    announced: int = 0


@dataclass(frozen=True)
class Request:
    """One request the stand-in received: path and query (single values)."""

    path: str
    query: dict[str, str]
    had_key: bool
    at: float  # time.monotonic() when received


# The server ----------------------------------------------------------------------------------


class CTXStandIn:
    """The stand-in server. Use as a context manager; ``base_url`` and ``api_key`` for clients.

    ``versions`` reports get a second version some uploads later (default ``reports // 5``);
    ``old_versions`` reports get, last of all, a version whose ``modified`` is older than their
    latest (default 1 from 5 reports on); every ``tie_every``-th record of an upload shares the
    previous record's ``_record_modified`` (0: strictly increasing); ``big_reports`` reports have
    55–130 members (default ``reports // 50``). The feed identity is touched half-way through.
    """

    def __init__(
        self,
        *,
        feeds: int = 2,
        reports: int = 6,
        orphans: int = 12,
        seed: int = 1,
        api_key: str = DEFAULT_API_KEY,
        port: int = 0,
        versions: int | None = None,
        old_versions: int | None = None,
        tie_every: int = 0,
        big_reports: int | None = None,
    ) -> None:
        self.api_key = api_key
        self.style = "cursor"
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._world = World(
            feeds=feeds,
            reports=reports,
            orphans=orphans,
            seed=seed,
            versions=reports // 5 if versions is None else versions,
            old_versions=int(reports >= 5) if old_versions is None else old_versions,
            tie_every=tie_every,
            big_reports=reports // 50 if big_reports is None else big_reports,
        )
        self.feeds: dict[str, Feed] = self._world.feeds
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.standin = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def world(self) -> World:
        """The records behind every answer; change them only while holding :attr:`lock`."""
        return self._world

    @property
    def lock(self) -> threading.RLock:
        """Held by every answer and every change: a request never sees half of a commit."""
        return self._lock

    @property
    def active_feed_ids(self) -> list[str]:
        return [f.id for f in self.feeds.values() if f.status == "active"]

    @property
    def inactive_feed_ids(self) -> list[str]:
        return [f.id for f in self.feeds.values() if f.status != "active"]

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> CTXStandIn:
        # A short poll so that stop() (shutdown) does not wait half a second per stand-in.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="ctx-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> CTXStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Changes: only what an upload or the server itself does -----------------------------------

    def upload(
        self, feed_id: str, objects: list[dict[str, Any]], *, same_time: bool = False
    ) -> list[str]:
        """One bundle upload (CTX's checks, then stix2arango); the ids that got a new record."""
        with self._lock:
            feed = self.feeds[feed_id]
            return self._world.upload(feed, copy.deepcopy(objects), same_time=same_time)

    def update_report(self, feed_id: str, report_id: str | None = None) -> str:
        """Upload a new version of a report: later ``modified``, changed description."""
        with self._lock:
            feed = self.feeds[feed_id]
            return self._world.update_report(feed, report_id or feed.report_ids[0])

    def upload_old_version(self, feed_id: str, object_id: str) -> str:
        """Upload a version whose ``modified`` is older than the latest: a new, newest record that
        is not ``_is_latest``."""
        with self._lock:
            return self._world.upload_old_version(self.feeds[feed_id], object_id)

    def touch_record(self, feed_id: str, object_id: str, *, whole_second: bool = False) -> str:
        """Bump ``_record_modified`` of every record of the id in place, no content change (CTX's
        ``update_identities`` does this to the feed identity); returns the new value."""
        with self._lock:
            return self._world.touch_record(
                self.feeds[feed_id], object_id, whole_second=whole_second
            )

    def add_objects(self, feed_id: str, count: int, *, same_record_time: bool = True) -> list[str]:
        """One upload of ``count`` orphan indicators (one ``_record_modified`` for all of its
        records by default)."""
        with self._lock:
            feed = self.feeds[feed_id]
            objs = self._world.producers[feed_id].orphans(count, kinds=["indicator"])
            self._world.upload(feed, objs, same_time=same_record_time)
            ids = [o["id"] for o in objs]
            feed.orphan_ids += ids
            return ids

    def add_raw(self, feed_id: str, obj: dict[str, Any]) -> None:
        """Store ``obj`` as an upload would, without CTX's validation (hostile ids included)."""
        with self._lock:
            self._world.upload(self.feeds[feed_id], [copy.deepcopy(obj)], checked=False)

    def inject(self, kind: str, *, path_contains: str = "", times: int = 1, **kwargs: Any) -> Fault:
        """Serve a fault ``times`` times on requests whose path contains ``path_contains``."""
        fault = Fault(kind, path_contains, times, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    # Ground truth -------------------------------------------------------------------------------

    def object(self, feed_id: str, object_id: str) -> dict[str, Any]:
        """The latest version of an object, without underscore keys."""
        with self._lock:
            record = self.feeds[feed_id].latest_record(object_id)
            if record is None:
                raise KeyError(object_id)
            return copy.deepcopy(strip(record))

    def latest_objects(self, feed_id: str) -> dict[str, dict[str, Any]]:
        """The latest version of every object that is not a synthetic relationship."""
        with self._lock:
            latest = self.feeds[feed_id].objects
            return {i: copy.deepcopy(strip(r)) for i, r in latest.items()}

    def expected_ids(self, feed_id: str) -> set[str]:
        """Every id a complete import of the feed holds (synthetic relationships excluded)."""
        with self._lock:
            return set(self.feeds[feed_id].objects)

    def records(self, feed_id: str) -> list[dict[str, Any]]:
        """Every stored record (all versions, synthetic edges too, underscore keys included), in
        listing order."""
        with self._lock:
            feed = self.feeds[feed_id]
            both = [(c, r) for c in (feed.vertex, feed.edge) for r in c.by_key.values()]
            both.sort(key=lambda item: item[0].order_key(item[1]))
            return [copy.deepcopy(r) for _, r in both]

    def report_ids(self, feed_id: str) -> list[str]:
        with self._lock:
            return list(self.feeds[feed_id].report_ids)

    def synthetic_ids(self, feed_id: str) -> set[str]:
        """Ids of stix2arango's embedded-ref relationships (``_is_ref: True``)."""
        with self._lock:
            edges = self.feeds[feed_id].edge.by_key.values()
            return {r["id"] for r in edges if r.get("_is_ref") is True}

    def related_ids(self, feed_id: str, object_id: str, *, embedded: bool = True) -> set[str]:
        """What a complete bundle of the object holds: the object, every stored edge touching it
        (synthetic ones with ``embedded``) and each edge's other end that is stored."""
        with self._lock:
            feed = self.feeds[feed_id]
            ends = feed.edge.ends()
            ids = {object_id}
            for index, other in (("to", "source_ref"), ("from", "target_ref")):
                for e in ends[index].get(object_id, ()):
                    if embedded or e.get("_is_ref") is not True:
                        ids |= {e.get("id"), e.get(other)}
            return {i for i in ids if i in feed.vertex.by_id or i in feed.edge.by_id}

    def queries(self, path_contains: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path_contains in r.path]

    # Serving ------------------------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.path_contains in path:
                    fault.times -= 1
                    return fault
        return None

    def handle(self, req: _Handler) -> None:
        split = urlsplit(req.path)
        path = split.path
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        key_ok = req.headers.get("API-KEY") == self.api_key
        with self._lock:
            self.requests.append(Request(path, query, key_ok, time.monotonic()))
        fault = self._take_fault(path)
        if fault is not None:
            if fault.kind == "latency":
                time.sleep(fault.delay)
            elif fault.kind == "drop":
                req.close_connection = True
                return
            elif fault.kind == "malformed":
                req.send_raw(200, b'{"objects": [{"id": "report--', "application/json")
                return
            elif fault.kind == "redirect":
                req.send_json(302, {"detail": "moved"}, {"Location": fault.location})
                return
            elif fault.kind == "truncated":
                req.send_truncated(fault.announced)
                return
            elif fault.kind == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                req.send_json(fault.status, {"detail": "injected fault"}, headers)
                return
        if not key_ok:
            req.send_json(401, {"detail": "Invalid API key."})
            return
        parts = [p for p in path.split("/") if p]
        try:
            with self._lock:
                status, body = self._route(parts, query)
        except ServerError:
            req.send_raw(500, b"<h1>Server Error (500)</h1>", "text/html")
            return
        if isinstance(body, bytes):
            req.send_raw(status, body, "application/json")
        else:
            req.send_json(status, body)

    def _route(self, parts: list[str], q: dict[str, str]) -> tuple[int, Any]:
        if parts[:1] != ["v1"]:
            return 404, {"detail": "Not found."}
        rest = parts[1:]
        if rest == ["subscriptions"]:
            items = [
                {
                    "feed": {"id": f.id, "name": f.name, "description": f"{f.name} description"},
                    "subscription": {"status": f.status, "created": "2025-01-01T00:00:00.000000Z"},
                }
                for f in self.feeds.values()
            ]
            return 200, _numbered(items, q, "results")
        if rest == ["feeds"]:
            items = [{"id": f.id, "name": f.name} for f in self.feeds.values()]
            return 200, _numbered(items, q, "feeds")
        if len(rest) < 2 or rest[0] != "feeds":
            return 404, {"detail": "Not found."}
        feed = self.feeds.get(rest[1])
        if feed is None or feed.status != "active":
            return 403, {"detail": "You are not subscribed to this feed."}
        if len(rest) == 2:
            return 200, {"id": feed.id, "name": feed.name}
        if rest[2:] == ["objects"]:
            if self.style == "page":
                return semantic_search(feed, q)
            return 200, get_objects(feed, q)
        if len(rest) == 5 and rest[2] == "objects" and rest[4] == "bundle":
            return 200, get_bundle(feed, rest[3], q)
        return 404, {"detail": "Not found."}


def _numbered(items: list[Any], q: dict[str, str], key: str) -> dict[str, Any]:
    size = positive_int(q.get("page_size"), cutoff=MAXIMUM_PAGE_SIZE, default=DEFAULT_PAGE_SIZE)
    number = positive_int(q.get("page"))
    chunk = items[(number - 1) * size : number * size]
    return {
        "page_size": size,
        "page_number": number,
        "page_results_count": len(chunk),
        "total_results_count": len(items),
        key: chunk,
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "CTXStandIn/2.0"
    # Headers and body are two writes: without TCP_NODELAY the body can wait for a delayed ACK
    # (see the OpenCTI stand-in); latency is what inject("latency") adds, nothing more.
    disable_nagle_algorithm = True
    # HTTP/1.0 (http.server's default): the connection closes after every answer, as gunicorn's
    # default sync workers do (cyberthreatexchange ``gunicorn.conf.py`` sets only ``workers``);
    # what the hosted front in front of it does is not in the open-source code.

    def do_GET(self) -> None:
        self.server.standin.handle(self)  # type: ignore[attr-defined]

    def send_raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def send_truncated(self, announced: int) -> None:
        """A 200 answer announcing ``announced`` bytes of objects that stops after 64 KiB."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(announced))
        self.end_headers()
        filler = b'{"type": "indicator", "id": "indicator--00000000-0000-4000-8000-000000000000"},'
        body = b'{"objects": [' + filler * (65536 // len(filler))
        self.wfile.write(body[: max(0, announced - 1)])
        self.wfile.flush()
        self.close_connection = True

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.send_raw(status, json.dumps(body).encode(), "application/json", headers)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="CTX API stand-in on 127.0.0.1 (for tests and demos)."
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--feeds", type=int, default=3)
    parser.add_argument("--reports", type=int, default=30)
    parser.add_argument("--orphans", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tie-every", type=int, default=0)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--style", choices=["cursor", "page"], default="cursor")
    args = parser.parse_args(argv)
    standin = CTXStandIn(
        feeds=args.feeds,
        reports=args.reports,
        orphans=args.orphans,
        seed=args.seed,
        api_key=args.api_key,
        port=args.port,
        tie_every=args.tie_every,
    )
    standin.style = args.style
    print(f"base_url={standin.base_url}", flush=True)
    print(f"api_key={standin.api_key}", flush=True)
    print(f"active_feed_ids={','.join(standin.active_feed_ids)}", flush=True)
    print(f"inactive_feed_ids={','.join(standin.inactive_feed_ids)}", flush=True)
    try:
        standin._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        standin._server.server_close()


if __name__ == "__main__":
    main()
