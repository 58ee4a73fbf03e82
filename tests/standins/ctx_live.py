"""Live mode of the CTX stand-in: uploads that land while the HTTP server answers.

A :class:`LiveWriter` thread uploads into a running :class:`~tests.standins.ctx.CTXStandIn`'s
world through the steps of :mod:`tests.standins.ctx_world`, each step under the stand-in's lock
(a request sees a commit whole or not at all), the steps of one upload apart in time, as the real
write path is:

* Records are stamped from the machine's UTC clock when they are prepared
  (``stix2arango/services/arangodb_service.py`` ``insert_several_objects``: ``_record_modified`` =
  ``datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` in the loop before
  ``insert_many``), and become visible when their transaction commits.
* An upload's vertices commit in one step (``stix2arango/stix2arango.py``
  ``process_bundle_into_graph``, ~L503), its relationships in a later one (``map_relationships``,
  ~L570) and the synthetic embedded-ref edges right after (``map_embedded_relationships``, ~L630);
  between them, after ``edge_delay`` seconds here, other uploads proceed. A listing read in between
  shows a report without the relationships its ``object_refs`` name.
* Late records: a step stamped and then held back ``late_hold`` seconds while uploads stamped
  after it commit first, so it appears *below* a ``next`` the listing already served.
  ``server/models.py`` ``update_identities`` does this to the feed identity (the stamp,
  ``timezone.now().isoformat()`` + ``"Z"``, is taken before the ``UPDATE`` waits for the lock of an
  upload's exclusive transaction); stix2arango before its "use transaction for uploads" (#85,
  2025-06-23) did it to whole chunks (stamped in Python, then a long ``insert_many`` while another
  worker's small upload landed).
* Uploads (``worker/tasks.py`` ``upload_bundle_task`` → ``make_uploads`` → ``Stix2Arango.run``):
  new reports with their members; new versions of a report (later ``modified``) with some changed
  members and a new one; orphan objects; the feed identity touched.
* Page-by-page jobs (``worker/tasks.py`` ``poll_taxii_connector_task``): a report's bundle in
  pages, each page one ``make_uploads``; a relationship whose end is in a later page is held back
  (``remove_problematic_relationships``) and uploaded at the end of the job
  (``rerun_relationship_uploads``), so the report comes chunks before its relationships.

The plan (what, which feed, when, which step is late) and the content come from ``seed``; when a
step runs is real time, so stamps differ between runs, their order does not.
"""

from __future__ import annotations

import copy
import heapq
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from tests.standins.ctx import CTXStandIn
from tests.standins.ctx_records import SMO_TYPES, Feed, parse_ts, strip, ts
from tests.standins.ctx_world import Upload

#: Default mix of upload kinds (weights).
KINDS = {"report": 5, "version": 5, "orphans": 4, "paged": 3, "touch": 2}


@dataclass(frozen=True)
class Planned:
    """One planned upload: ``at`` seconds after start; ``late`` is the step held back, if any."""

    at: float
    feed_id: str
    kind: str  # report | version | orphans | paged | touch
    late: str | None = None  # "vertices" | "edges"


@dataclass(frozen=True)
class Step:
    """A commit that became visible: its stamps and the ids that got a new record."""

    at: float  # time.monotonic()
    upload: int
    feed_id: str
    kind: str  # vertices | edges | synthetic | touch
    ids: tuple[str, ...]
    stamps: tuple[str, ...]
    late: bool


def make_plan(
    rng: random.Random,
    feed_ids: list[str],
    uploads: int,
    seconds: float,
    late_share: float,
    kinds: dict[str, int] | None = None,
) -> list[Planned]:
    weights = kinds or KINDS
    plan = []
    for i in range(uploads):
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        late = rng.choice(["vertices", "edges"]) if rng.random() < late_share else None
        at = seconds * (i + rng.uniform(0.0, 0.8)) / uploads
        plan.append(Planned(round(at, 4), feed_ids[i % len(feed_ids)], kind, late))
    return plan


class LiveWriter:
    """Uploads into ``standin`` while it serves; see the module docstring.

    ``uploads`` over about ``seconds`` (the last steps land up to ``edge_delay`` + ``late_hold``
    seconds, a page-by-page job a few delays, later), or exactly ``plan``. :meth:`settle` waits
    until every write is visible; :meth:`stop` starts no further upload and commits what is under
    way at once.
    """

    def __init__(
        self,
        standin: CTXStandIn,
        *,
        seed: int = 1,
        uploads: int = 40,
        seconds: float = 12.0,
        feed_ids: list[str] | None = None,
        edge_delay: tuple[float, float] = (0.2, 0.8),
        late_hold: float = 1.2,
        late_share: float = 0.2,
        page_size: int = 5,
        plan: list[Planned] | None = None,
    ) -> None:
        self.standin = standin
        self.world = standin.world
        self.rng = random.Random(f"live-{seed}")
        feeds = feed_ids or standin.active_feed_ids
        self.plan = plan or make_plan(self.rng, feeds, uploads, seconds, late_share)
        self.edge_delay = edge_delay
        self.late_hold = late_hold
        self.page_size = page_size
        self.steps: list[Step] = []
        self.settled_reports = {f: list(standin.report_ids(f)) for f in feeds}
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, bool, Callable[[float], None]]] = []
        self._seq = 0
        self._t0 = 0.0
        self._stopping = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctx-live-writer", daemon=True)

    # Control ------------------------------------------------------------------------------------

    def start(self) -> LiveWriter:
        with self.standin.lock:
            self.world.clock.use_real_time()
        self._t0 = time.monotonic()
        for index, planned in enumerate(self.plan):
            self._push(planned.at, partial(self._start, index=index, planned=planned), start=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def settle(self, timeout: float = 120.0) -> bool:
        """Wait until every planned write is visible; False on timeout."""
        return self._done.wait(timeout)

    def wait_for(self, predicate: Callable[[list[Step]], bool], timeout: float = 30.0) -> bool:
        """Wait until ``predicate(steps)`` holds (steps so far, in commit order)."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(list(self.steps)), timeout)

    # The scheduler: one thread, steps in the order of their planned times ------------------------

    def _push(self, due: float, action: Callable[[float], None], *, start: bool = False) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, start, action))
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if not self._heap:
                        return
                    due, _, start, action = self._heap[0]
                    wait = self._t0 + due - time.monotonic()
                    if wait > 0 and not self._stopping:
                        self._cond.wait(wait)
                        continue
                    heapq.heappop(self._heap)
                if not (start and self._stopping):
                    # Follow-up steps are due relative to this step's planned time, not to when it
                    # ran: the order of steps, and so every choice made in them, is the seed's.
                    action(due)
        finally:
            self._done.set()

    def _log(self, upload: int, feed: Feed, kind: str, ids: list[Any], late: bool) -> None:
        records = [feed.latest_record(i) for i in ids]
        stamps = tuple(sorted(str(r["_record_modified"]) for r in records if r is not None))
        step = Step(time.monotonic(), upload, feed.id, kind, tuple(map(str, ids)), stamps, late)
        with self._cond:
            self.steps.append(step)
            self._cond.notify_all()

    # One upload's steps --------------------------------------------------------------------------

    def _start(self, due: float, index: int, planned: Planned) -> None:
        feed = self.standin.feeds[planned.feed_id]
        kind = planned.kind
        if kind == "version" and not self.settled_reports[feed.id]:
            kind = "report"
        if kind == "touch":
            with self.standin.lock:
                stamp = self.world.touch_stamp()
            self._push(due + self.late_hold, lambda _d: self._touch(index, feed, stamp))
            return
        with self.standin.lock:
            if kind == "orphans":
                objects = self.world.producers[feed.id].orphans(self.rng.randint(1, 4))
                feed.orphan_ids += [o["id"] for o in objects if o["type"] != "extension-definition"]
            elif kind == "version":
                objects = self._version(feed, self.rng.choice(self.settled_reports[feed.id]))
            else:
                objects = self._report(feed)
                feed.report_ids.append(objects[-1]["id"])
        if kind == "paged":
            self._page(due, index, feed, self._pages(objects), 0, [], planned.late)
            return
        report = objects[-1]["id"] if objects[-1]["type"] == "report" else None
        self._upload(
            due, index, feed, objects, planned.late, lambda _d: self._settled(feed, report)
        )

    def _touch(self, index: int, feed: Feed, stamp: str) -> None:
        with self.standin.lock:
            self.world.apply_touch(feed, str(feed.identity_id), stamp)
            self._log(index, feed, "touch", [feed.identity_id], True)

    def _settled(self, feed: Feed, report_id: str | None) -> None:
        if report_id is not None and report_id not in self.settled_reports[feed.id]:
            self.settled_reports[feed.id].append(report_id)

    def _upload(
        self,
        due: float,
        index: int,
        feed: Feed,
        objects: list[dict[str, Any]],
        late: str | None,
        then: Callable[[float], None],
    ) -> None:
        with self.standin.lock:
            up = self.world.prepare(feed, objects)
            self.world.stage_vertices(up)
        hold = self.late_hold if late == "vertices" else 0.0
        self._push(due + hold, lambda d: self._vertices(d, index, up, late, then))

    def _vertices(
        self, due: float, index: int, up: Upload, late: str | None, then: Callable[[float], None]
    ) -> None:
        with self.standin.lock:
            self._log(index, up.feed, "vertices", self.world.commit(up), late == "vertices")
        delay = self.rng.uniform(*self.edge_delay)
        self._push(due + delay, lambda d: self._edges(d, index, up, late, then))

    def _edges(
        self, due: float, index: int, up: Upload, late: str | None, then: Callable[[float], None]
    ) -> None:
        with self.standin.lock:
            self.world.stage_edges(up)
        hold = self.late_hold if late == "edges" else 0.0
        self._push(due + hold, lambda d: self._edges_commit(d, index, up, late, then))

    def _edges_commit(
        self, due: float, index: int, up: Upload, late: str | None, then: Callable[[float], None]
    ) -> None:
        with self.standin.lock:
            self._log(index, up.feed, "edges", self.world.commit(up), late == "edges")
        with self.standin.lock:
            self.world.stage_synthetic(up)
            self._log(index, up.feed, "synthetic", self.world.commit(up), False)
        then(due)

    # Page-by-page jobs (poll_taxii_connector_task) ------------------------------------------------

    def _pages(self, objects: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """The report first, its relationships anywhere after it (some before their ends)."""
        report = objects[-1]
        rels = [o for o in objects if o["type"] == "relationship"]
        rest = [o for o in objects[:-1] if o["type"] != "relationship"]
        ordered = [report, *rest]
        for rel in rels:
            ordered.insert(self.rng.randint(1, len(ordered)), rel)
        size = self.page_size
        return [ordered[i : i + size] for i in range(0, len(ordered), size)]

    def _page(
        self,
        due: float,
        index: int,
        feed: Feed,
        pages: list[list[dict[str, Any]]],
        number: int,
        held: list[dict[str, Any]],
        late: str | None,
    ) -> None:
        if number == len(pages):
            # rerun_relationship_uploads: what still misses an end stays a warning.
            with self.standin.lock:
                still = {o["id"] for o in self.world.missing_ends(feed, held)}
            rerun = [o for o in held if o["id"] not in still]
            report = pages[0][0]["id"]
            self._upload(due, index, feed, rerun, None, lambda _d: self._settled(feed, report))
            return
        with self.standin.lock:
            missing = self.world.missing_ends(feed, pages[number])
        held += missing
        page = [o for o in pages[number] if o not in missing]
        gap = self.rng.uniform(0.05, 0.3)

        def next_page(done: float) -> None:
            self._push(
                done + gap, lambda d: self._page(d, index, feed, pages, number + 1, held, None)
            )

        self._upload(due, index, feed, page, late if number == 0 else None, next_page)

    # Content ----------------------------------------------------------------------------------

    def _report(self, feed: Feed) -> list[dict[str, Any]]:
        """A new report, last in its bundle (``Producer.report_bundle``)."""
        identity = copy.deepcopy(strip(_latest(feed, str(feed.identity_id))))
        size = self.rng.randint(4, 8)
        return self.world.producers[feed.id].report_bundle(size, identity)[1]

    def _version(self, feed: Feed, report_id: str) -> list[dict[str, Any]]:
        """A later ``modified`` of the report, of one to three of its members, and a new member."""
        report = copy.deepcopy(strip(_latest(feed, report_id)))
        members = []
        for ref in report.get("object_refs", []):
            record = feed.latest_record(ref)
            if record is None or ref == feed.identity_id or "modified" not in record:
                continue
            if record.get("type") in SMO_TYPES or record.get("type") == "relationship":
                continue
            members.append(copy.deepcopy(strip(record)))
        changed = self.rng.sample(members, min(len(members), self.rng.randint(1, 3)))
        for member in changed:
            member["modified"] = _later(member["modified"])
            member["description"] = f"{member.get('description', '')} Revised.".strip()
        producer = self.world.producers[feed.id]
        added = producer.make("indicator", [str(feed.identity_id)])
        objects: list[dict[str, Any]] = [*changed, added]
        if members:
            rel = producer.relationship(added, self.rng.choice(members))
            objects.append(rel)
            report["object_refs"] = [*report["object_refs"], added["id"], rel["id"]]
        else:
            report["object_refs"] = [*report["object_refs"], added["id"]]
        report["modified"] = _later(report["modified"])
        report["description"] = f"{report.get('description', '')} Updated."
        return [*objects, report]


def _latest(feed: Feed, object_id: str) -> dict[str, Any]:
    record = feed.latest_record(object_id)
    if record is None:
        raise KeyError(object_id)
    return record


def _later(modified: str) -> str:
    """A ``modified`` after ``modified`` and not before now (a real author's clock)."""
    return ts(max(parse_ts(modified) + timedelta(days=1), datetime.now(UTC)))
