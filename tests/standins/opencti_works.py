"""The OpenCTI stand-in's resolvers for works and bundles: pycti's ``initiate_work``,
``to_processed``, ``get_work`` (``api/opencti_api_work.py``), ``send_bundle_to_api``
(``api/opencti_api_client.py``); bundles checked as ``sendStixBundle`` (``src/domain/stix.js``)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from tests.standins.opencti_graphql import data_error
from tests.standins.opencti_state import PlatformState, Push, Work, now

_WORK_EDIT_FIELDS = (
    "toProcessed",
    "toReceived",
    "ping",
    "reportExpectation",
    "addExpectations",
    "addDraftContext",
    "delete",
)


def work_add(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    connector_id = str(variables.get("connectorId"))
    if connector_id not in platform.connectors:
        # The workAdd resolver (opencti-graphql src/resolvers/connector.js) reads
        # ``connector(...).id`` without checking: an unknown connector is a TypeError, which
        # Apollo Server answers as an INTERNAL_SERVER_ERROR carrying the TypeError's text.
        return data_error(
            "workAdd", "Cannot read properties of null (reading 'id')", "INTERNAL_SERVER_ERROR"
        )
    work = Work(
        id=f"work_{connector_id}_{uuid.uuid4()}",
        connector_id=connector_id,
        name=variables.get("friendlyName"),
        timestamp=now(),
    )
    platform.works[work.id] = work
    return {"data": {"workAdd": {"id": work.id}}}


def work_edit(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    work_id = str(variables.get("id") or variables.get("workId"))
    work = platform.works.get(work_id)
    action = next((f for f in _WORK_EDIT_FIELDS if re.search(rf"\b{f}\b", query)), None)
    if work is None:
        return data_error("workEdit", "Work not found", "FUNCTIONAL_ERROR", id=work_id)
    result: Any = work_id
    if action == "toProcessed":
        work.processed = True
        work.in_error = bool(variables.get("inError"))
        work.processed_time = now()
        work.messages.append({"timestamp": now(), "message": variables.get("message")})
        if work.in_error:
            work.errors.append({"timestamp": now(), "message": variables.get("message")})
    elif action == "toReceived":
        work.received_time = now()
        work.status = "progress"
    elif action == "addExpectations":
        work.expectations += int(variables.get("expectations") or 0)
    elif action == "reportExpectation":
        if variables.get("error"):
            work.errors.append(dict(variables["error"]))
    elif action == "delete":
        del platform.works[work_id]
    return {"data": {"workEdit": {action or "unknown": result}}}


def push(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    connector_id = str(variables.get("connectorId"))
    work_id = variables.get("work_id")
    text = variables.get("bundle")
    cause: str | None = None
    bundle: Any = None
    try:
        bundle = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        cause = "Unexpected token in JSON"
    if cause is None and (
        not isinstance(bundle, dict)
        or bundle.get("type") != "bundle"
        or not isinstance(bundle.get("objects"), list)
        or not bundle["objects"]
    ):
        cause = "Invalid stix bundle"
    if cause is None and connector_id not in platform.connectors:
        cause = "Invalid connector"
    if cause is not None:
        platform.rejected_pushes.append(
            {"connector_id": connector_id, "work_id": work_id, "cause": cause}
        )
        # sendStixBundle wraps every failure: UnsupportedError('Invalid bundle', { cause }).
        return data_error(
            "stixBundlePush",
            "Invalid bundle",
            "UNSUPPORTED_ERROR",
            http_status=500,
            genre="BUSINESS",
            cause=cause,
        )
    assert isinstance(bundle, dict)
    if not work_id:
        # Like sendStixBundle: a push without a work gets one of its own.
        name = platform.connectors[connector_id].get("name")
        work_id = work_add(
            platform, {"connectorId": connector_id, "friendlyName": f"{name} run @ {now()}"}, ""
        )["data"]["workAdd"]["id"]
    platform.pushes.append(Push(connector_id, work_id, bundle, len(text or ""), platform.applicant))
    work = platform.works.get(str(work_id)) if work_id else None
    if work is not None:
        work.pushed_objects += len(bundle["objects"])
        if work.status == "wait":
            work.status = "progress"
        _worker_errors(platform, work, bundle["objects"])
    return {"data": {"stixBundlePush": True}}


def _worker_errors(platform: PlatformState, work: Work, objects: list[Any]) -> None:
    """What the platform's workers report on a work for the objects they fail to import.

    A worker that fails an item calls ``workEdit(id).reportExpectation(error: {error, source})``
    and the platform appends ``{timestamp, message: error, source}`` to the work's ``errors``
    (``reportExpectation`` in opencti-graphql ``src/domain/work.js``; ``errors: [WorkMessage]``,
    ``WorkMessage { timestamp, message, sequence, source }`` in ``config/schema/opencti.graphql``).
    The worker's ``source`` is the item it was importing, as JSON.
    """
    for obj in objects:
        message = (
            platform.refused_objects.get(str(obj.get("id"))) if isinstance(obj, dict) else None
        )
        if message is not None:
            work.errors.append({"timestamp": now(), "message": message, "source": json.dumps(obj)})


def work_query(platform: PlatformState, variables: dict[str, Any], query: str) -> dict[str, Any]:
    work = platform.works.get(str(variables.get("id")))
    if work is None:
        return {"data": {"work": None}}
    work.polls += 1
    if platform.work_status is not None:
        status = platform.work_status
    elif work.processed and work.polls > platform.complete_after_polls:
        status = "complete"
    else:
        status = work.status
    done = status == "complete"
    expected = work.pushed_objects or work.expectations
    return {
        "data": {
            "work": {
                "id": work.id,
                "name": work.name,
                "user": {"name": "[C] connector"},
                "timestamp": work.timestamp,
                "status": status,
                "event_source_id": work.connector_id,
                "received_time": work.received_time,
                "processed_time": work.processed_time,
                "completed_time": now() if done else None,
                "tracking": {
                    "import_expected_number": expected,
                    "import_processed_number": expected if done else 0,
                },
                "messages": [_work_message(m) for m in work.messages],
                "errors": [_work_message(m) for m in work.errors],
            }
        }
    }


def _work_message(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": m.get("timestamp"),
        "message": m.get("message"),
        "sequence": m.get("sequence"),
        "source": m.get("source"),
    }
