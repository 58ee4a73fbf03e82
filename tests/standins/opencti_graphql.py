"""GraphQL as the OpenCTI stand-in reads and answers it: the operation and first root field of a
request, and errors in the platform's 6.x shape (HTTP 200, ``{"errors": [{"message",
"extensions": {"code", "data"}}]}``, with ``data: {root: null}`` when a resolver refused)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_OPERATION = re.compile(r"\b(query|mutation)\s+(\w+)")


@dataclass
class Request:
    operation: str
    root_field: str | None
    query: str
    variables: dict[str, Any]
    applicant_id: str | None = None


def parse_request(body: dict[str, Any]) -> Request:
    """Operation name (``query X``/``mutation X``) and first root field of a GraphQL request."""
    query = str(body.get("query") or "")
    match = _OPERATION.search(query)
    operation = str(body.get("operationName") or (match.group(2) if match else "anonymous"))
    start = query.find("{", match.end() if match else 0)
    root = re.match(r"\s*(\w+)", query[start + 1 :]) if start >= 0 else None
    variables = body.get("variables") or {}
    return Request(operation, root.group(1) if root else None, query, dict(variables))


def error(message: str, code: str, **data: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, "data": data}}


def data_error(root: str, message: str, code: str, **data: Any) -> dict[str, Any]:
    return {"errors": [{**error(message, code, **data), "path": [root]}], "data": {root: None}}
