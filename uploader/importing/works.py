"""A file's OpenCTI work: its name; closing it when nothing in the file is importable; waiting for
it to complete (``UPLOADER_WAIT_FOR_WORK``) and the errors the platform's workers reported on it;
marking it in error when the import failed.

The calls are pycti's public work API (``helper.api.work``: ``get_work``, ``to_processed``), on
the object :mod:`uploader.importing.opencti` passes in; nothing here imports pycti.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from shared.timestamps import format_stix_time
from uploader.errors import ImportFailure, TransientImportError, WorkErrorsError
from uploader.importing.check import SpoolFile
from uploader.importing.classify import classify, describe, redact
from uploader.spool_ops.origin import Origin

logger = logging.getLogger(__name__)

#: Seconds between two ``work(id)`` polls when waiting for a work to complete.
WORK_POLL_INTERVAL = 2.0


def work_name(spool_file: SpoolFile) -> str:
    """The OpenCTI work name of a file: says the feed and the report (or feed objects) it holds."""
    modified = spool_file.name.modified.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"CTX {spool_file.feed_id} {spool_file.name.subject} ({modified})"


def adopted_work_name(origin: Origin, spool_file: SpoolFile) -> str:
    """An adopted file's work name: diode-import's ``<connector name> run @ <time>`` (its
    ``_process_bundle``), with the time from the file's name and the original file name."""
    when = format_stix_time(spool_file.name.modified)
    who = origin.connector.name if origin.connector is not None else "Adopted bundle"
    return f"{who} run @ {when} ({origin.original_name})"


def wait_for_work(
    work_api: Any,
    work_id: str,
    *,
    timeout: float,
    poll_interval: float,
    closed: threading.Event,
    token: str,
) -> None:
    """Poll ``work_api.get_work`` until the work is ``complete`` (at most ``timeout`` seconds).

    Raises :class:`WorkErrorsError` when the platform's workers reported errors on it, and
    :class:`TransientImportError` when it is not complete in time or ``closed`` is set first.
    """
    deadline = time.monotonic() + timeout
    status = "unknown"
    while True:
        try:
            work = work_api.get_work(work_id) or {}
        except Exception as exc:  # classified like any pycti failure
            raise classify(exc, work_id, token) from exc
        status = str(work.get("status", "unknown"))
        if status == "complete":
            errors = _work_errors(work)
            if errors:
                raise WorkErrorsError(
                    redact(_errors_text(errors), token), work_id=work_id, errors=errors
                )
            return
        if time.monotonic() >= deadline or closed.is_set():
            break
        closed.wait(min(poll_interval, max(0.0, deadline - time.monotonic())))
    raise TransientImportError(
        f"work {work_id} not complete after {timeout:g} s (status {status})", work_id=work_id
    )


def close_as_empty(work_api: Any, work_id: str, objects: int) -> None:
    """Close the work of a file none of whose ``objects`` is of a type OpenCTI imports.

    A feed-level file of extension definitions, say: pycti would raise "Nothing to import" and
    the file would be failed although nothing is wrong with it. The work says so instead.
    """
    work_api.to_processed(
        work_id, f"ctx-uploader: none of the {objects} objects is of a type OpenCTI imports"
    )
    logger.warning(
        "no object of this file is of a type OpenCTI imports",
        extra={"work_id": work_id, "objects": objects},
    )


def mark_in_error(work_api: Any, work_id: str, failure: ImportFailure, token: str) -> None:
    """Close the work as failed (``to_processed(in_error=True)``), as best it can."""
    try:
        work_api.to_processed(work_id, str(failure)[:500], in_error=True)
    except Exception as exc:  # noqa: BLE001 - best effort: the failure itself is what matters
        logger.warning(
            "could not mark the work in error",
            extra={"work_id": work_id, "reason": redact(describe(exc), token)[:200]},
        )


def _work_errors(work: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The errors the platform's workers reported on a completed work (``work.errors``)."""
    return tuple(_work_error(error) for error in work.get("errors") or [])


def _work_error(error: Any) -> dict[str, Any]:
    """One entry of ``work.errors`` (the platform's ``WorkMessage``: timestamp, message, source)."""
    if not isinstance(error, dict):
        return {"timestamp": None, "message": str(error), "source": None}
    return {key: error.get(key) for key in ("timestamp", "message", "source")}


def _errors_text(errors: tuple[dict[str, Any], ...]) -> str:
    lines = [f"OpenCTI completed the work with {len(errors)} error(s):"]
    for error in errors[:20]:
        source = str(error.get("source") or "")
        lines.append(f"{error.get('message')} (source: {source[:300] or 'not given'})")
    if len(errors) > 20:
        lines.append(f"... and {len(errors) - 20} more (platform_errors lists them all)")
    return "\n".join(lines)
