"""The data behind the CTX stand-in: per feed, the two ArangoDB collections stix2arango fills.

Each feed is a vertex and an edge collection of **records** (STIX content plus stix2arango's
underscore fields, :mod:`tests.standins.ctx_records`), built only by simulated uploads
(:meth:`World.upload`) of what the feeds' authors write (:mod:`tests.standins.ctx_producer`) that
do what the real write path does:

* ``cyberthreatexchange/worker/tasks.py`` ``make_uploads`` after ``server/arango_helpers.py``
  ``build_context``: of duplicate ids in one upload only the last is kept; an object whose content
  hash equals the hash of its id's latest record is skipped; a relationship whose ``source_ref`` or
  ``target_ref`` is neither in the upload nor stored is skipped (``missing_source``/``missing_target``).
* ``stix2arango/stix2arango/stix2arango.py`` ``run_with_bundle`` with CTX's options
  (``ignore_embedded_relationships=False``, ``ignore_embedded_relationships_sro=True``,
  ``ignore_embedded_relationships_smo=True``): non-relationships become vertices
  (``process_bundle_into_graph``), ``relationship`` objects edges with ``_is_ref: False``
  (``map_relationships``; sightings stay vertices), then ``map_embedded_relationships`` turns every
  ``*_ref``/``*_refs`` of each inserted non-SMO, non-relationship object into a synthetic
  relationship edge (``_is_ref: True``) built as ``stix2arango/utils.py`` ``create_relationship_obj``
  does.
* ``stix2arango/services/arangodb_service.py`` ``insert_several_objects``: a new record only for a
  new ``(id, _record_md5_hash)`` (the ``s2a_unique_constraint`` index), ``_record_created`` =
  ``_record_modified`` = ``datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` taken per
  record, ``_key`` = ``f"{id}+{now}"``, ``_source_type``/``_target_type`` on relationships; then
  ``update_is_latest_several`` (``services/version_annotator.py`` ``annotate_versions``: the latest
  is the greatest ``modified``, then the greatest ``_record_modified``; without ``modified``, the
  greatest ``_record_modified``) and ``deprecate_relationships`` (edges whose ``_from`` is a record
  that lost ``_is_latest`` lose it too).
* A new feed is ``server/models.py`` ``create_collection``: stix2arango's default objects (its
  identity and marking-definition, the dogesec identity, nine TLP marking-definitions; no synthetic
  edges) and then the feed's identity. ``update_identities`` (:meth:`World.touch_record`) rewrites
  ``_record_modified`` of every record of one id in place with ``timezone.now().isoformat()`` plus
  ``Z``: a whole second then reads ``…:05Z``, which sorts after ``…:05.999999Z``.

``now`` is a simulated clock (:class:`Clock`): strictly increasing by default, with ``tie_every``
or ``same_time`` giving several records one ``_record_modified`` as a fast insert loop does.

:meth:`World.upload` runs an upload's steps back to back. They exist one by one for a writer that
interleaves uploads while the server answers (:mod:`tests.standins.ctx_live`), as stix2arango at
f2dddc3 commits them in separate transactions (``stix2arango/stix2arango.py``):
:meth:`~World.prepare` (the API's ``build_context``), :meth:`~World.stage_vertices` (records
stamped) and :meth:`~World.commit` (``process_bundle_into_graph``'s transaction, ~L503),
:meth:`~World.stage_edges` + commit (``map_relationships``, ~L570), :meth:`~World.stage_synthetic`
+ commit (``map_embedded_relationships``, ~L630). ``update_identities`` splits the same way
(:meth:`~World.touch_stamp`, :meth:`~World.apply_touch`).

The synthetic relationship follows the newest stix2arango code and tests: ``relationship_type``
from the property name (``object_refs`` → ``object``, ``created_by_ref`` → ``created-by``,
``object_marking_refs`` → ``object-marking``, ``resolves_to_refs`` → ``resolves-to``), ``id`` =
``relationship--`` + uuid5(``72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4``, ``f"{type}+{source}+{target}"``),
``created``/``modified``/``object_marking_refs`` copied from the source object when it has them
(an SCO's have neither ``created`` nor ``modified``), ``created_by_ref`` stix2arango's identity,
``external_references`` ``[{"source_name": "stix2arango", "description": "embedded-relationship"}]``
(an older utils.py wrote a bare dict), empty refs skipped. Its record hash covers ``_from``/``_to``
(the source record's ``_id``), so every new version of a report stores new records of all its
synthetic edges under the same ids.
"""

from __future__ import annotations

import copy
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.standins.ctx_producer import Producer, default_objects
from tests.standins.ctx_records import (
    DEFAULT_NOTE,
    NS,
    S2A_IDENTITY_ID,
    SMO_TYPES,
    Clock,
    Collection,
    Feed,
    md5_of,
    parse_ts,
    refs_of,
    strip,
    synthetic_id,
    ts,
)


@dataclass
class Upload:
    """One upload on its way through stix2arango: what the API accepted, the records stamped and
    not yet committed (collection, records, the key map their ``_from``/``_to`` go to), the ids
    committed so far."""

    feed: Feed
    objects: list[dict[str, Any]]
    same_time: bool
    note: str
    key_map: dict[Any, str] = field(default_factory=dict)
    staged: list[tuple[Collection, list[dict[str, Any]], dict[Any, str]]] = field(
        default_factory=list
    )
    inserted: list[Any] = field(default_factory=list)


class World:
    """All feeds, one server clock, and the upload path that is the only way records appear."""

    def __init__(
        self,
        *,
        feeds: int,
        reports: int,
        orphans: int,
        seed: int,
        versions: int,
        old_versions: int,
        tie_every: int,
        big_reports: int,
    ) -> None:
        self.clock = Clock(
            datetime(2025, 3, 1, tzinfo=UTC), random.Random(f"{seed}-clock"), tie_every
        )
        self.feeds: dict[str, Feed] = {}
        self.producers: dict[str, Producer] = {}
        schedules = []
        for index in range(feeds + 1):
            feed_id = str(uuid.uuid5(NS, f"feed-{seed}-{index}"))
            inactive = index == feeds
            feed = Feed(
                feed_id,
                f"Stand-in feed {index}" + (" (inactive)" if inactive else ""),
                status="inactive" if inactive else "active",
            )
            self.feeds[feed_id] = feed
            self._create_collection(feed, index, seed)
            rng = random.Random(f"{seed}-{index}-schedule")
            # Nobody may read the inactive feed: a token world is enough there.
            count = min(reports, 2) if inactive else reports
            steps = self._schedule(
                rng, count, min(orphans, 2) if inactive else orphans, versions, old_versions
            )
            big = set(rng.sample(range(count), min(big_reports, count)))
            schedules.append([(feed, rng, big, step) for step in steps])
        # Feeds are written by different authors at the same time: interleave their uploads.
        for step in range(max(len(s) for s in schedules)):
            for schedule in schedules:
                if step < len(schedule):
                    self._run(*schedule[step])

    # Building ------------------------------------------------------------------------------

    def _create_collection(self, feed: Feed, index: int, seed: int) -> None:
        """models.py ``create_collection``: default objects, then the feed's identity."""
        self.upload(feed, default_objects(), checked=False, note=DEFAULT_NOTE, embedded=False)
        when = ts(datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=index))
        identity = {
            "type": "identity",
            "spec_version": "2.1",
            "id": f"identity--{uuid.uuid5(NS, f'identity-{seed}-{index}')}",
            "created": when,
            "modified": when,
            "name": f"CTX producer {index}",
            "identity_class": "organization",
        }
        feed.identity_id = identity["id"]
        self.upload(feed, [identity], checked=False)
        self.producers[feed.id] = Producer(random.Random(f"{seed}-{index}"), index, identity["id"])

    @staticmethod
    def _schedule(
        rng: random.Random, reports: int, orphans: int, versions: int, old_versions: int
    ) -> list[tuple[str, int]]:
        """The order of one feed's uploads: reports, orphan batches in between, new versions
        some time after their report, the identity touched half-way, old versions last."""
        steps = [("report", i) for i in range(reports)]
        left = orphans
        while left > 0:
            count = min(left, rng.randint(1, 4))
            steps.insert(rng.randint(0, len(steps)), ("orphans", count))
            left -= count
        for i in rng.sample(range(reports), min(versions, reports)):
            after = steps.index(("report", i))
            steps.insert(rng.randint(after + 1, len(steps)), ("version", i))
        if reports >= 2:
            steps.insert(len(steps) // 2, ("touch", 0))
        steps += [("old", i) for i in rng.sample(range(reports), min(old_versions, reports))]
        return steps

    def _run(self, feed: Feed, rng: random.Random, big: set[int], step: tuple[str, int]) -> None:
        kind, arg = step
        producer = self.producers[feed.id]
        if kind == "report":
            size = rng.randint(55, 130) if arg in big else rng.randint(4, 10)
            identity = strip(self._latest_or_fail(feed, feed.identity_id))
            report_id, bundle = producer.report_bundle(size, copy.deepcopy(identity))
            feed.report_ids.append(report_id)
            self.upload(feed, bundle)
        elif kind == "orphans":
            objs = producer.orphans(arg)
            feed.orphan_ids += [o["id"] for o in objs if o["type"] != "extension-definition"]
            self.upload(feed, objs)
        elif kind == "version":
            self.update_report(feed, feed.report_ids[arg])
        elif kind == "touch":
            self.touch_record(feed, str(feed.identity_id))
        else:
            self.upload_old_version(feed, feed.report_ids[arg])

    @staticmethod
    def _latest_or_fail(feed: Feed, object_id: Any) -> dict[str, Any]:
        record = feed.latest_record(object_id)
        if record is None:
            raise KeyError(object_id)
        return record

    # The upload path -----------------------------------------------------------------------

    def upload(
        self,
        feed: Feed,
        objects: list[dict[str, Any]],
        *,
        same_time: bool = False,
        checked: bool = True,
        note: str = "",
        embedded: bool = True,
    ) -> list[Any]:
        """Store ``objects`` as one CTX bundle upload does; the ids that got a new record."""
        up = self.prepare(feed, objects, same_time=same_time, checked=checked, note=note)
        self.stage_vertices(up)
        self.commit(up)
        self.stage_edges(up)
        self.commit(up)
        if embedded:
            self.stage_synthetic(up)
            self.commit(up)
        return up.inserted

    # The same path in steps, for writers that interleave uploads (tests.standins.ctx_live) -----

    def prepare(
        self,
        feed: Feed,
        objects: list[dict[str, Any]],
        *,
        same_time: bool = False,
        checked: bool = True,
        note: str = "",
    ) -> Upload:
        """An upload as the API accepts it (``build_context``'s checks), nothing stamped yet."""
        objects = [dict(o) for o in objects]
        if checked:
            objects = self._build_context(feed, objects)
        self.clock.next_upload()
        return Upload(feed, objects, same_time, note)

    def stage_vertices(self, up: Upload) -> None:
        """``process_bundle_into_graph`` up to ``insert_several_objects``: every vertex record
        stamped with ``now``; nothing is visible until :meth:`commit`."""
        vertices = [o for o in up.objects if o.get("type") != "relationship"]
        for o in vertices:
            o.setdefault("_stix2arango_note", up.note)
        up.staged.append((up.feed.vertex, self._stamp(up.feed.vertex, vertices, up), up.key_map))

    def stage_edges(self, up: Upload) -> None:
        """``map_relationships``, stamped now: needs the vertices committed (its
        ``object_key_mapping``), as the server's second transaction does."""
        feed = up.feed
        relationships = [o for o in up.objects if o.get("type") == "relationship"]
        for rel in relationships:
            rel.setdefault("_is_ref", False)
            rel.setdefault("_stix2arango_note", up.note)
            self._link(feed, rel, up.key_map)
        up.staged.append((feed.edge, self._stamp(feed.edge, relationships, up), up.key_map))

    def stage_synthetic(self, up: Upload) -> None:
        """``map_embedded_relationships``, after the relationships' commit: a synthetic edge for
        every ref of each vertex this upload inserted (``ignore_embedded_relationships_sro``/
        ``_smo``)."""
        feed = up.feed
        synthetic = []
        for obj in up.objects:
            if obj.get("id") not in up.inserted or obj.get("type") in SMO_TYPES:
                continue
            if obj.get("type") == "relationship":
                continue
            for rel_type, targets in refs_of(strip(obj)):
                for target in targets:
                    if isinstance(target, str):
                        synthetic.append(self._synthetic(feed, obj, rel_type, target, up.key_map))
        # Synthetic edges map nothing: their key map is a throwaway.
        up.staged.append((feed.edge, self._stamp(feed.edge, synthetic, up), {}))

    def commit(self, up: Upload) -> list[Any]:
        """The transaction's commit: staged records become visible (``insert_many`` with the
        ``s2a_unique_constraint`` deciding what is new now, then ``update_is_latest_several``)."""
        inserted: list[Any] = []
        for collection, records, key_map in up.staged:
            new = self._store(collection, records, key_map)
            self._update_is_latest(up.feed, collection, new)
            inserted += new
        up.staged.clear()
        up.inserted += inserted
        return inserted

    def _build_context(self, feed: Feed, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        last = {o.get("id"): i for i, o in enumerate(objects)}
        in_upload = set(last)
        kept = []
        for i, obj in enumerate(objects):
            if last[obj.get("id")] != i:
                continue  # duplicate_object: only the last one stays
            latest = feed.latest_record(obj.get("id"))
            if latest is not None and latest["_record_md5_hash"] == md5_of(obj):
                continue  # existing_object
            if not self._ends_known(feed, obj, in_upload):
                continue  # missing_source / missing_target
            kept.append(obj)
        return kept

    def missing_ends(self, feed: Feed, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The relationships ``build_context`` warns about (``missing_source``/``missing_target``:
        an end neither in ``objects`` nor stored), which CTX's TAXII connector holds back
        (``worker/tasks.py`` ``remove_problematic_relationships``)."""
        in_upload = {o.get("id") for o in objects}
        return [o for o in objects if not self._ends_known(feed, o, in_upload)]

    @staticmethod
    def _ends_known(feed: Feed, obj: dict[str, Any], in_upload: set[Any]) -> bool:
        return obj.get("type") != "relationship" or all(
            obj.get(end) in in_upload or feed.latest_record(obj.get(end)) is not None
            for end in ("source_ref", "target_ref")
        )

    def _link(self, feed: Feed, rel: dict[str, Any], key_map: dict[Any, str]) -> None:
        for end, attr in (("source_ref", "_from"), ("target_ref", "_to")):
            rel[attr] = key_map.get(rel.get(end)) or f"{feed.vertex.name}/{rel.get(end)}"

    def _synthetic(
        self, feed: Feed, obj: dict[str, Any], rel_type: str, target: str, key_map: dict[Any, str]
    ) -> dict[str, Any]:
        source = obj.get("id")
        rel: dict[str, Any] = {"relationship_type": rel_type}
        for key in ("created", "modified", "object_marking_refs"):
            if key in obj:
                rel[key] = obj[key]
        rel.update(
            id=synthetic_id(rel_type, str(source), target),
            created_by_ref=S2A_IDENTITY_ID,
            source_ref=source,
            target_ref=target,
            _from=key_map.get(source) or f"{feed.vertex.name}/{source}",
            _to=key_map.get(target) or f"{feed.vertex.name}/{target}",
            _stix2arango_note="",
            _is_ref=True,
            type="relationship",
            spec_version="2.1",
            external_references=[
                {"source_name": "stix2arango", "description": "embedded-relationship"}
            ],
        )
        return rel

    def _stamp(
        self, collection: Collection, objects: list[dict[str, Any]], up: Upload
    ) -> list[dict[str, Any]]:
        """``insert_several_objects``' loop: ``_record_modified`` = ``now`` per record."""
        records = []
        unique = {(o.get("id"), o.get("_record_md5_hash") or md5_of(o)): o for o in objects}
        for (object_id, digest), obj in unique.items():
            now = self.clock.tick(up.same_time)
            key = f"{object_id}+{now}"
            record = dict(obj)
            record.update(
                _record_md5_hash=digest,
                _is_latest=False,
                _record_created=now,
                _record_modified=now,
                _key=key,
                _id=f"{collection.name}/{key}",
            )
            if record.get("type") == "relationship":
                record["_target_type"] = str(record.get("target_ref")).split("--")[0]
                record["_source_type"] = str(record.get("source_ref")).split("--")[0]
            records.append(record)
        return records

    def _store(
        self, collection: Collection, records: list[dict[str, Any]], key_map: dict[Any, str]
    ) -> list[Any]:
        inserted = []
        for record in records:
            object_id, digest, key = record.get("id"), record["_record_md5_hash"], record["_key"]
            existing = next(
                (r for r in collection.by_id.get(object_id, []) if r["_record_md5_hash"] == digest),
                None,
            )
            if existing is not None:
                key_map[object_id] = existing["_id"]
                continue
            if key in collection.by_key:
                continue  # insert_many(overwrite_mode="ignore") drops a clashing _key silently
            collection.add(record)
            key_map[object_id] = record["_id"]
            inserted.append(object_id)
        return inserted

    def _update_is_latest(self, feed: Feed, collection: Collection, ids: list[Any]) -> None:
        deprecated = []
        for object_id in set(ids):
            records = collection.by_id[object_id]
            with_modified = [r for r in records if r.get("modified") is not None]
            if with_modified:
                newest = max(str(r["modified"]) for r in with_modified)
                pool = [r for r in with_modified if str(r["modified"]) == newest]
            else:
                newest, pool = None, records
            top = max(r["_record_modified"] for r in pool)
            for r in records:
                mine = None if r.get("modified") is None else str(r["modified"])
                latest = mine == newest and r["_record_modified"] == top
                if r["_is_latest"] and not latest:
                    deprecated.append(r["_id"])
                r["_is_latest"] = latest
        # deprecate_relationships: edges from a deprecated record, and edges from those.
        while deprecated:
            edges = [e for d in deprecated for e in feed.edge.by_from.get(d, []) if e["_is_latest"]]
            for e in edges:
                e["_is_latest"] = False
            deprecated = [e["_id"] for e in edges]
        collection.changed()
        feed.edge.changed()

    # Changes tests make ---------------------------------------------------------------------

    def update_report(self, feed: Feed, report_id: str) -> str:
        latest = copy.deepcopy(strip(self._latest_or_fail(feed, report_id)))
        modified = parse_ts(latest["modified"]) + timedelta(days=1)
        latest["modified"] = ts(max(modified, self.clock.now))
        latest["description"] = f"{latest.get('description', '')} Updated."
        self.upload(feed, [latest])
        return report_id

    def upload_old_version(self, feed: Feed, object_id: str) -> str:
        latest = copy.deepcopy(strip(self._latest_or_fail(feed, object_id)))
        if "modified" not in latest:
            raise ValueError(f"{object_id} has no modified: it has no older version")
        newest = parse_ts(latest["modified"])
        created = parse_ts(latest.get("created", latest["modified"]))
        # Between created and the latest modified; a day earlier when they are equal (the server
        # checks neither).
        older = created + (newest - created) / 2 if created < newest else newest - timedelta(days=1)
        latest["modified"] = ts(older)
        latest["description"] = f"{latest.get('description', '')} Earlier draft."
        self.upload(feed, [latest])
        return object_id

    def touch_record(self, feed: Feed, object_id: str, *, whole_second: bool = False) -> str:
        """models.py ``update_identities``: ``UPDATE`` every record of the id with a new
        ``_record_modified`` (``timezone.now().isoformat()`` with ``Z``), content unchanged."""
        stamp = self.touch_stamp(whole_second=whole_second)
        self.apply_touch(feed, object_id, stamp)
        return stamp

    def touch_stamp(self, *, whole_second: bool = False) -> str:
        """The first half of ``update_identities``: the time, taken before the query waits for
        the collection's lock (an upload's exclusive transaction)."""
        self.clock.next_upload()
        if whole_second:
            self.clock.now = (self.clock.now + timedelta(seconds=1)).replace(microsecond=0)
        return self.clock.now.isoformat().replace("+00:00", "Z")

    def apply_touch(self, feed: Feed, object_id: str, stamp: str) -> None:
        """The second half: the ``UPDATE`` that makes ``stamp`` visible."""
        for collection in (feed.vertex, feed.edge):
            for record in collection.by_id.get(object_id, []):
                record["_record_modified"] = stamp
            collection.changed()
