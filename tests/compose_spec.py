"""What ``docker compose config`` does to a compose file, for tests/test_compose.py: variable
interpolation by the compose specification (compose-spec ``interpolation.md``: ``$VAR``,
``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
``${VAR:+alt}``, ``${VAR+alt}``, ``$$``; nesting is refused), and the stages of a Dockerfile as the
Dockerfile reference parses them (continuation lines, comments, exec form).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^{}$]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class InterpolationError(ValueError):
    """What compose reports instead of starting: a required variable unset, or bad syntax."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """``value`` with every variable reference replaced, as compose-spec's interpolation.md says."""

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None and match["braced"] is None and match["bare"] is None:
            raise InterpolationError(f"invalid interpolation format in {value!r}")
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        is_set, non_empty = current is not None, bool(current)
        if op in (":-", "-"):
            return current if (non_empty if op == ":-" else is_set) else arg  # type: ignore[return-value]
        if op in (":?", "?"):
            if not (non_empty if op == ":?" else is_set):
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return current  # type: ignore[return-value]
        if op in (":+", "+"):
            return arg if (non_empty if op == ":+" else is_set) else ""
        return current or ""

    return _REFERENCE.sub(one, value)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value of a parsed compose file (keys are never interpolated)."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


def referenced(text: str) -> set[str]:
    return {m["braced"] or m["bare"] for m in _REFERENCE.finditer(text) if not m["escaped"]}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    assert isinstance(env, dict)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dockerfile_stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """Each ``FROM ... AS name`` stage of the Dockerfile: its (INSTRUCTION, arguments) in order,
    continuation lines joined and comments dropped, as the Dockerfile reference parses them."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            current = []
            stage = re.search(r"\bAS\s+(\S+)$", rest, re.I)
            if stage:
                stages[stage.group(1)] = current
        current.append((keyword.upper(), rest.strip()))
    return stages


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form CMD (after any --options of HEALTHCHECK)."""
    command = re.sub(r"^(--\S+\s+)*(CMD\s+)?", "", arguments)
    value = json.loads(command)
    assert isinstance(value, list)
    return [str(part) for part in value]
