"""The CTX stand-in against facts from the real server's code and its own tests.

Sources (``muchdogesec/cyberthreatexchange`` unless named): ``server/arango_helpers.py``
(``make_objects_query``, ``get_objects``, ``get_limit``, ``get_bundle``, ``make_bundle_query``,
``make_cursor_for_next_page``, ``encode_bundle_cursor``), ``tests/src/test_arango_helpers.py``
(``test_get_objects_returns_next_cursor_and_strips_record_modified``,
``test_bundle_cursor_round_trip``, ``test_get_bundle2_uses_encoded_cursor_and_parameters``),
``tests/src/views/test_feed_object_results.py`` (``test_list_returns_expected_object_count`` and
``__with_refs``, ``test_list_forwards_feed_query_params``), ``settings.py`` (page sizes 50),
stix2arango's ``utils.py``/``arangodb_service.py`` and their tests, and the views.py of d59a89f2
for the page-number listing. Everything goes over real HTTP to a running stand-in.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.standins.ctx import CTXStandIn

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
S2A_IDENTITY = "identity--72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4"
S2A_NAMESPACE = uuid.UUID("72e906ce-ca1b-5d73-adcd-9ea9eb66a1b4")
EMBEDDED_REFERENCE = [{"source_name": "stix2arango", "description": "embedded-relationship"}]


@pytest.fixture(scope="module")
def big() -> Iterator[CTXStandIn]:
    # Hundreds of reports, several with more than 50 members, versions, ties inside uploads.
    with CTXStandIn(feeds=1, reports=300, orphans=40, seed=3, tie_every=6, big_reports=6) as s:
        yield s


@pytest.fixture
def small() -> Iterator[CTXStandIn]:
    with CTXStandIn(feeds=1, reports=6, orphans=6, seed=5) as s:
        yield s


def get(standin: CTXStandIn, path: str, *, key: bool = True, **params: Any) -> requests.Response:
    headers = {"API-KEY": standin.api_key} if key else {}
    return requests.get(standin.base_url + path, params=params, headers=headers, timeout=10)


def objects_path(standin: CTXStandIn) -> str:
    return f"v1/feeds/{standin.active_feed_ids[0]}/objects/"


def bundle_path(standin: CTXStandIn, object_id: str) -> str:
    return f"v1/feeds/{standin.active_feed_ids[0]}/objects/{object_id}/bundle/"


def walk(standin: CTXStandIn, **params: Any) -> list[dict[str, Any]]:
    """Follow ``next`` as a naive client does, until it is null."""
    pages = []
    after = params.pop("added_after", None)
    while True:
        query = {**params, **({"added_after": after} if after else {})}
        page = get(standin, objects_path(standin), **query).json()
        pages.append(page)
        if page["next"] is None:
            return pages
        after = page["next"]


def walk_bundle(standin: CTXStandIn, object_id: str, **params: Any) -> list[dict[str, Any]]:
    pages = [get(standin, bundle_path(standin, object_id), **params).json()]
    while pages[-1]["next"] is not None:
        query = {**params, "cursor": pages[-1]["next"]}
        pages.append(get(standin, bundle_path(standin, object_id), **query).json())
    return pages


def content_key(obj: dict[str, Any]) -> tuple[str, str]:
    public = {k: v for k, v in obj.items() if not k.startswith("_")}
    return str(obj.get("id")), json.dumps(public, sort_keys=True)


def record_times(standin: CTXStandIn) -> dict[tuple[str, str], str]:
    """Each stored record's ``_record_modified``, found by its id and served content."""
    records = standin.records(standin.active_feed_ids[0])
    times = {content_key(r): r["_record_modified"] for r in records}
    assert len(times) == len(records), "two records serve the same content"
    return times


def stored(standin: CTXStandIn, *, synthetic: bool) -> set[tuple[str, str]]:
    records = standin.records(standin.active_feed_ids[0])
    return {content_key(r) for r in records if synthetic or r.get("_is_ref") is not True}


def decode_cursor(cursor: str) -> tuple[int, str, str, str, int]:
    """The packed cursor as ``encode_bundle_cursor`` writes it: ``!BIIIQ`` + three strings."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    version, k1_len, kid_len, k2_len, index = struct.unpack("!BIIIQ", raw[:21])
    k1 = raw[21 : 21 + k1_len].decode()
    kid = raw[21 + k1_len : 21 + k1_len + kid_len].decode()
    k2 = raw[21 + k1_len + kid_len : 21 + k1_len + kid_len + k2_len].decode()
    return version, k1, kid, k2, index


# Listing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "refs", [pytest.param("false", id="plain"), pytest.param("true", id="refs")]
)
def test_no_listed_object_has_an_underscore_key(big: CTXStandIn, refs: str) -> None:
    pages = walk(big, show_embedded_refs=refs)
    listed = [o for page in pages for o in page["objects"]]
    assert len(listed) > 500
    assert not [k for o in listed for k in o if k.startswith("_")]


def test_next_is_the_greatest_record_modified_of_the_page(big: CTXStandIn) -> None:
    times = record_times(big)
    pages = walk(big, limit=20)
    assert len(pages) > 20
    for page in pages[:-1]:
        page_times = [times[content_key(o)] for o in page["objects"]]
        assert page_times == sorted(page_times)
        assert page["next"] == max(page_times)
        assert TS.match(page["next"]), "next is a bare _record_modified, never a URL"
        assert page["count"] == len(page["objects"])
    assert pages[-1] == {"objects": [], "next": None, "count": 0}


def test_an_empty_page_has_null_next(small: CTXStandIn) -> None:
    last = small.records(small.active_feed_ids[0])[-1]["_record_modified"]
    page = get(small, objects_path(small), added_after=last).json()
    assert page == {"objects": [], "next": None, "count": 0}


@pytest.mark.parametrize(
    ("limit", "per_half"),
    [
        pytest.param("500", 50, id="over-max"),
        pytest.param("7", 7, id="seven"),
        pytest.param("0", 1, id="zero"),
        pytest.param("-3", 1, id="negative"),
        pytest.param("abc", 50, id="not-an-int"),
        pytest.param("", 50, id="empty"),
    ],
)
def test_limit_is_clamped_per_half(big: CTXStandIn, limit: str, per_half: int) -> None:
    page = get(big, objects_path(big), limit=limit).json()
    edges = [o for o in page["objects"] if o["type"] == "relationship"]
    # The start of the feed has more than 50 of each kind: both halves are full.
    assert len(edges) == per_half
    assert page["count"] == len(page["objects"]) == 2 * per_half


def test_types_without_relationship_leave_out_the_edge_half(big: CTXStandIn) -> None:
    page = get(big, objects_path(big), limit=500, types="indicator,report").json()
    assert {o["type"] for o in page["objects"]} == {"indicator", "report"}
    assert page["count"] == 50


def test_following_next_naively_misses_records(big: CTXStandIn) -> None:
    pages = walk(big)
    seen = {content_key(o) for page in pages for o in page["objects"]}
    truth = stored(big, synthetic=False)
    assert seen <= truth
    # One half fills up; its records between its last one and next are on no page at all.
    assert len(truth - seen) > len(truth) // 4


def test_a_relationship_walk_lists_only_relationships_and_loses_only_boundary_ties(
    big: CTXStandIn,
) -> None:
    times = record_times(big)
    pages = walk(big, types="relationship", limit=10)
    listed = [o for page in pages for o in page["objects"]]
    assert {o["type"] for o in listed} == {"relationship"}
    assert not {o["id"] for o in listed} & big.synthetic_ids(big.active_feed_ids[0])
    truth = {k for k in stored(big, synthetic=False) if '"type": "relationship"' in k[1]}
    missing = truth - {content_key(o) for o in listed}
    boundaries = {page["next"] for page in pages}
    assert {times[k] for k in missing} <= boundaries


def test_records_sharing_a_time_across_a_page_boundary_are_lost(small: CTXStandIn) -> None:
    feed = small.active_feed_ids[0]
    before = small.records(feed)[-1]["_record_modified"]
    ids = small.add_objects(feed, 30, same_record_time=True)
    pages = walk(small, types="indicator", limit=10, added_after=before)
    listed = [o["id"] for page in pages for o in page["objects"]]
    assert len(pages) == 2  # ten of the thirty, then next equals their shared time: nothing left
    assert set(listed) < set(ids) and len(listed) == 10


def test_ties_come_back_in_a_stable_order_that_is_not_by_id(small: CTXStandIn) -> None:
    feed = small.active_feed_ids[0]
    before = small.records(feed)[-1]["_record_modified"]
    small.add_objects(feed, 40, same_record_time=True)
    first = get(small, objects_path(small), types="indicator", added_after=before).json()
    again = get(small, objects_path(small), types="indicator", added_after=before).json()
    order = [o["id"] for o in first["objects"]]
    assert len(order) == 40 and order == [o["id"] for o in again["objects"]]
    assert order != sorted(order)


def test_every_version_is_listed(small: CTXStandIn) -> None:
    feed = small.active_feed_ids[0]
    report = small.report_ids(feed)[1]
    small.update_report(feed, report)
    small.upload_old_version(feed, report)
    pages = walk(small, types="report")
    versions = [o["modified"] for page in pages for o in page["objects"] if o["id"] == report]
    assert len(versions) == 3
    assert versions[0] < versions[1] and versions[2] < versions[1]
    # The newest record is not the latest version: the object itself is the greatest modified.
    assert small.object(feed, report)["modified"] == versions[1]


def test_synthetic_relationships_are_listed_only_with_show_embedded_refs(big: CTXStandIn) -> None:
    synthetic = big.synthetic_ids(big.active_feed_ids[0])
    plain = walk(big, types="relationship")
    with_refs = walk(big, types="relationship", show_embedded_refs="true")
    assert not {o["id"] for p in plain for o in p["objects"]} & synthetic
    listed = [o for p in with_refs for o in p["objects"] if o["id"] in synthetic]
    assert listed
    kinds = {o["relationship_type"] for o in listed}
    assert {"object", "created-by", "object-marking", "resolves-to", "belongs-to"} <= kinds
    for obj in listed:
        name = f"{obj['relationship_type']}+{obj['source_ref']}+{obj['target_ref']}"
        assert obj["id"] == f"relationship--{uuid.uuid5(S2A_NAMESPACE, name)}"
        assert obj["created_by_ref"] == S2A_IDENTITY
        assert obj["external_references"] == EMBEDDED_REFERENCE


def test_default_objects_and_feed_identity_are_in_the_listing(small: CTXStandIn) -> None:
    first = get(small, objects_path(small), types="marking-definition,identity").json()
    ids = {o["id"] for o in first["objects"]}
    # stix2arango's objects "automatically imported on collection creation" (the server's test
    # removes them by id) and the feed's identity.
    assert {S2A_IDENTITY, "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487"} <= ids
    assert len(ids) == 13


def test_touch_with_a_whole_second_writes_a_shorter_time_that_sorts_last(
    small: CTXStandIn,
) -> None:
    feed = small.active_feed_ids[0]
    before = small.records(feed)[-1]["_record_modified"]
    identity = small.feeds[feed].identity_id
    assert identity is not None
    stamp = small.touch_record(feed, identity, whole_second=True)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", stamp)
    page = get(small, objects_path(small), added_after=before).json()
    assert [o["id"] for o in page["objects"]] == [identity]
    assert page["next"] == stamp
    # "…:05Z" > "…:05.999999Z" as strings: a client comparing parsed times would disagree.
    assert get(small, objects_path(small), added_after=stamp[:-1] + ".999999Z").json()["count"] == 1


# Bundle ----------------------------------------------------------------------------------------


def one_version_report(standin: CTXStandIn) -> str:
    feed = standin.active_feed_ids[0]
    counts: dict[str, int] = {}
    for record in standin.records(feed):
        counts[record["id"]] = counts.get(record["id"], 0) + 1
    return next(r for r in standin.report_ids(feed) if counts[r] == 1)


def test_bundle_starts_with_the_object_and_brings_synthetic_relationships(
    small: CTXStandIn,
) -> None:
    feed = small.active_feed_ids[0]
    report = one_version_report(small)
    members = small.object(feed, report)["object_refs"]
    page = get(small, bundle_path(small, report)).json()
    ids = [o["id"] for o in page["objects"]]
    assert ids[0] == report
    expected = {
        f"relationship--{uuid.uuid5(S2A_NAMESPACE, f'object+{report}+{m}')}" for m in members
    }
    assert expected <= set(ids)
    assert not [k for o in page["objects"] for k in o if k.startswith("_")]


def test_bundle_without_embedded_refs_is_the_object_alone(small: CTXStandIn) -> None:
    feed = small.active_feed_ids[0]
    report = one_version_report(small)
    page = get(small, bundle_path(small, report), show_embedded_refs="false").json()
    # A report is the end of no real relationship: without its refs nothing touches it.
    assert page == {"objects": [small.object(feed, report)], "next": None, "count": 1}


def test_bundle_cursor_is_the_packed_struct_of_the_last_edge(small: CTXStandIn) -> None:
    report = one_version_report(small)
    times = record_times(small)
    page = get(small, bundle_path(small, report), limit=5).json()
    assert page["count"] == 11  # the object, then five (other end, edge) pairs
    ids = [o["id"] for o in page["objects"]]
    version, k1, kid, k2, index = decode_cursor(page["next"])
    assert (version, k2, index) == (1, "", 0)
    assert kid == ids[-2] and k1 == times[content_key(page["objects"][-1])]
    # Page 2: only edges after k1 (often none: k1 is the latest of the first five by id).
    second = get(small, bundle_path(small, report), limit=5, cursor=page["next"]).json()
    assert report not in [o["id"] for o in second["objects"]]
    edges = [o for o in second["objects"] if o["type"] == "relationship"]
    assert all(times[content_key(e)] > k1 for e in edges)


def test_bundle_limit_is_clamped(big: CTXStandIn) -> None:
    feed = big.active_feed_ids[0]
    report = max(big.report_ids(feed), key=lambda r: len(big.object(feed, r)["object_refs"]))
    page = get(big, bundle_path(big, report), limit=500).json()
    assert page["count"] == 1 + 2 * 50 and page["next"] is not None


def test_bundle_of_a_report_with_more_than_50_members_loses_members(big: CTXStandIn) -> None:
    feed = big.active_feed_ids[0]
    report = max(big.report_ids(feed), key=lambda r: len(big.object(feed, r)["object_refs"]))
    members = big.object(feed, report)["object_refs"]
    assert len(members) > 50
    pages = walk_bundle(big, report)
    got = {o["id"] for page in pages for o in page["objects"]}
    assert got <= big.related_ids(feed, report)
    # Each direction takes its first 50 edges by the other end's id, not by time; the page then
    # sorts by time, and the next page starts after the latest of them.
    assert set(members) - got


def test_versions_of_a_report_eat_into_its_bundle(small: CTXStandIn) -> None:
    feed = small.active_feed_ids[0]
    report = one_version_report(small)
    before = walk_bundle(small, report, limit=20)
    assert len(before) == 1
    for _ in range(3):
        small.update_report(feed, report)
    # Each version stored its own records of the same synthetic edges; the limit counts records.
    after = walk_bundle(small, report, limit=20)
    first = {o["id"] for o in after[0]["objects"]}
    assert after[0]["next"] is not None
    assert first < {o["id"] for o in before[0]["objects"]}


def test_bundle_can_bring_a_member_in_a_version_that_is_not_its_latest(
    small: CTXStandIn,
) -> None:
    feed = small.active_feed_ids[0]
    report = one_version_report(small)
    latest = small.latest_objects(feed)
    member = next(m for m in small.object(feed, report)["object_refs"] if "modified" in latest[m])
    small.upload_old_version(feed, member)
    page = get(small, bundle_path(small, report)).json()
    served = next(o for o in page["objects"] if o["id"] == member)
    assert served["modified"] < small.object(feed, member)["modified"]


def test_bundle_of_an_unknown_object(small: CTXStandIn) -> None:
    response = get(small, bundle_path(small, "indicator--00000000-0000-4000-8000-000000000000"))
    # get_bundle inserts the requested id on page 1 and counts it even though nothing matched.
    assert response.status_code == 200
    assert response.json() == {"objects": [], "next": None, "count": 1}


def test_a_cursor_that_does_not_decode_is_a_server_error(small: CTXStandIn) -> None:
    report = small.report_ids(small.active_feed_ids[0])[0]
    assert get(small, bundle_path(small, report), cursor="bm9wZQ").status_code == 500


# Hosted layer and page style -------------------------------------------------------------------


def test_keys_and_subscriptions(small: CTXStandIn) -> None:
    assert get(small, objects_path(small), key=False).status_code == 401
    inactive = small.inactive_feed_ids[0]
    assert get(small, f"v1/feeds/{inactive}/objects/").status_code == 403
    assert get(small, "v1/feeds/not-a-feed/objects/").status_code == 403
    subs = get(small, "v1/subscriptions/").json()
    statuses = {s["feed"]["id"]: s["subscription"]["status"] for s in subs["results"]}
    assert statuses == {small.active_feed_ids[0]: "active", inactive: "inactive"}


def test_page_style_envelope(small: CTXStandIn) -> None:
    feed = small.active_feed_ids[0]
    small.update_report(feed, small.report_ids(feed)[0])
    small.style = "page"
    first = get(small, objects_path(small), page_size=10).json()
    assert list(first) == [
        "page_size",
        "page_number",
        "page_results_count",
        "total_results_count",
        "objects",
    ]
    # execute_query hands the class's DEFAULT_PAGE_SIZE to the envelope, not the size asked for.
    assert (first["page_size"], first["page_number"], first["page_results_count"]) == (50, 1, 10)
    total = first["total_results_count"]
    pages = [get(small, objects_path(small), page=n, page_size=10).json() for n in range(1, 99)]
    listed = [o for p in pages for o in p["objects"]]
    assert len(listed) == total and pages[-1]["objects"] == []
    ids = [o["id"] for o in listed]
    assert len(ids) == len(set(ids)), "latest versions only"
    modified = [o["modified"] for o in listed if "modified" in o]
    assert modified == sorted(modified, reverse=True)
    latest = small.latest_objects(feed)
    left_out = {i for i, o in latest.items() if o["type"] in ("threat-actor", "vulnerability")}
    assert left_out and not left_out & set(ids)
    last = small.records(feed)[-1]["_record_modified"]
    assert get(small, objects_path(small), updated_since=last).json()["objects"] == []
