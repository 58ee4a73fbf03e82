"""fetcher.stix: timestamps normalised for ordering, references, storage artefacts."""

from __future__ import annotations

import uuid

import pytest

from fetcher.stix import (
    STIX2ARANGO_NAMESPACE,
    is_storage_artefact,
    normal_time,
    references,
    version_key,
)
from shared.timestamps import parse_stix_timestamp


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-01T10:00:00Z",
        "2024-05-01T10:00:00.1Z",
        "2024-05-01T10:00:00.123Z",
        "2024-05-01T10:00:00.123456Z",
        "2024-05-01T10:00:00.123456789Z",
        "2024-02-29T23:59:59.999Z",
    ],
)
def test_normal_time_agrees_with_parsing(value: str) -> None:
    parsed = parse_stix_timestamp(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert normal_time(value) == parsed


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00.000000Z"),  # an offset: parsed
        ("2023-02-29T10:00:00Z", ""),  # not a day of the calendar
        ("2024-05-01T24:00:00Z", ""),
        ("yesterday", ""),
        ("", ""),
        (None, ""),
        (1714557600, ""),
    ],
)
def test_normal_time_of_other_values(value: object, expected: str) -> None:
    assert normal_time(value) == expected


def test_normal_times_sort_as_the_instants() -> None:
    values = ["2024-05-01T10:00:00.5Z", "2024-05-01T10:00:00Z", "2024-05-01T10:00:00.05Z"]
    ordered = sorted(values, key=normal_time)
    assert ordered == ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.05Z", "2024-05-01T10:00:00.5Z"]


def test_version_key_orders_modified_before_listing_position() -> None:
    older = version_key({"modified": "2024-05-01T10:00:00Z"}, "2025-01-01T00:00:00.000000Z")
    newer = version_key({"modified": "2024-05-02T10:00:00Z"}, "2024-01-01T00:00:00.000000Z")
    assert older < newer
    sco_first = version_key({}, "2024-01-01T00:00:00.000000Z")
    sco_later = version_key({}, "2024-01-02T00:00:00.000000Z")
    assert sco_first < sco_later


def test_references_nested_and_contents() -> None:
    report = {
        "type": "report",
        "created_by_ref": "identity--1",
        "object_refs": ["indicator--1", "malware--1"],
        "granular_markings": [{"marking_ref": "marking-definition--1", "selectors": ["name"]}],
        "Not_a_ref": "indicator--9",
        "description_ref_text": "indicator--8",
    }
    assert sorted(references(report)) == [
        "identity--1",
        "indicator--1",
        "malware--1",
        "marking-definition--1",
    ]
    assert sorted(references(report, follow_contents=False)) == [
        "identity--1",
        "marking-definition--1",
    ]


def test_storage_artefact_recognised_by_its_derived_id() -> None:
    source, target = "report--" + str(uuid.uuid4()), "indicator--" + str(uuid.uuid4())
    derived = uuid.uuid5(STIX2ARANGO_NAMESPACE, f"object+{source}+{target}")
    edge = {
        "type": "relationship",
        "id": f"relationship--{derived}",
        "relationship_type": "object",
        "source_ref": source,
        "target_ref": target,
    }
    assert is_storage_artefact(edge)
    assert not is_storage_artefact({**edge, "id": f"relationship--{uuid.uuid4()}"})
    assert not is_storage_artefact({**edge, "type": "indicator"})
    # A uuid5 of another namespace (txt2stix and other producers derive their ids too) is kept.
    other = uuid.uuid5(uuid.NAMESPACE_URL, f"object+{source}+{target}")
    assert not is_storage_artefact({**edge, "id": f"relationship--{other}"})
    assert not is_storage_artefact({**edge, "id": None})
