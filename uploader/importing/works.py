"""The errors a platform's workers reported on a completed work (``UPLOADER_WAIT_FOR_WORK``)."""

from __future__ import annotations

from typing import Any


def work_errors(work: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The errors the platform's workers reported on a completed work (``work.errors``)."""
    return tuple(_work_error(error) for error in work.get("errors") or [])


def _work_error(error: Any) -> dict[str, Any]:
    """One entry of ``work.errors`` (the platform's ``WorkMessage``: timestamp, message, source)."""
    if not isinstance(error, dict):
        return {"timestamp": None, "message": str(error), "source": None}
    return {key: error.get(key) for key in ("timestamp", "message", "source")}


def errors_text(errors: tuple[dict[str, Any], ...]) -> str:
    lines = [f"OpenCTI completed the work with {len(errors)} error(s):"]
    for error in errors[:20]:
        source = str(error.get("source") or "")
        lines.append(f"{error.get('message')} (source: {source[:300] or 'not given'})")
    if len(errors) > 20:
        lines.append(f"... and {len(errors) - 20} more (platform_errors lists them all)")
    return "\n".join(lines)
