"""The running uploader's heartbeat, and ``ctx-uploader health``, which judges it.

While ``watch`` or ``once`` runs, a :class:`Heartbeat` thread rewrites
``processing/<instance>/.health.json`` every few seconds: the process (pid, host), when it last
heard from OpenCTI, and whether its file watcher is alive. A hidden name, so no reader of the spool
takes it for a bundle (:func:`shared.layout.walk_bundles`), and inside the instance's own claim
folder, which only this process writes. When the uploader has nothing to import it asks the
platform for its connector (the importer's ``probe``, which also registers a connector the
platform forgot) so that "has not answered" means the platform is gone, not that the spool is
quiet.

:func:`health_problems` reads that file and the spool only: no network, no lock, as a container's
HEALTHCHECK running beside the uploader every minute needs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared.durable import write_atomic
from shared.errors import SharedError
from shared.layout import Spool
from uploader.spool_ops.status import status

logger = logging.getLogger(__name__)

HEARTBEAT_NAME = ".health.json"
#: Seconds between two heartbeats (shorter when UPLOADER_HEALTH_MAX_SILENCE asks for it).
HEARTBEAT_INTERVAL = 10.0
#: A heartbeat older than this many intervals means the uploader is stuck or gone.
STALE_INTERVALS = 6


@runtime_checkable
class PlatformProbe(Protocol):
    """What an importer offers the heartbeat (the real one does; test fakes need not)."""

    @property
    def last_answer(self) -> float | None:
        """Unix time of the platform's last answer of any kind (an error is an answer)."""

    def probe(self) -> bool:
        """Ask the platform something cheap; True if it answered."""


@dataclass(frozen=True)
class HeartbeatRecord:
    """What ``.health.json`` holds (times are Unix seconds)."""

    pid: int
    host: str
    instance: str
    mode: str
    interval: float
    started_at: float
    updated_at: float
    last_platform_answer_at: float | None
    watcher_alive: bool | None
    stopped_at: float | None = None
    #: Why it stopped, when no retry could help (a pycti newer than the platform, a refused token).
    stopped_because: str | None = None

    @classmethod
    def of_this_process(cls, instance: str, mode: str, interval: float) -> HeartbeatRecord:
        """The record of this process starting now: nothing heard, nothing watched yet."""
        now = time.time()
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            instance=instance,
            mode=mode,
            interval=interval,
            started_at=now,
            updated_at=now,
            last_platform_answer_at=None,
            watcher_alive=None,
        )

    @classmethod
    def read(cls, path: Path) -> HeartbeatRecord:
        """Raise OSError if unreadable, ValueError if not a heartbeat."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})
        except TypeError as exc:
            raise ValueError(str(exc)) from None


def heartbeat_path(spool: Spool, instance: str) -> Path:
    return spool.processing / instance / HEARTBEAT_NAME


def record_stop(spool: Spool, instance: str, *, mode: str, reason: str) -> None:
    """Leave a heartbeat saying the uploader stopped and why, for ``health`` to repeat: a
    container that exits on a set-up the platform refuses is then unhealthy with that reason."""
    record = HeartbeatRecord.of_this_process(instance, mode, HEARTBEAT_INTERVAL)
    record = replace(record, stopped_at=record.updated_at, stopped_because=reason)
    try:
        write_atomic(heartbeat_path(spool, instance), json.dumps(asdict(record), indent=1).encode())
    except SharedError as exc:
        logger.warning("cannot write the health heartbeat: %s", exc)


class Heartbeat:
    """Writes the heartbeat until :meth:`stop` (which writes a last one saying so)."""

    def __init__(
        self,
        spool: Spool,
        instance: str,
        *,
        mode: str,
        max_silence: float,
        importer: object,
        watcher_alive: Callable[[], bool | None],
    ) -> None:
        self.path = heartbeat_path(spool, instance)
        self.interval = max(0.2, min(HEARTBEAT_INTERVAL, max_silence / 4))
        self._probe = importer if isinstance(importer, PlatformProbe) else None
        self._watcher_alive = watcher_alive
        self._stop = threading.Event()
        self._base = HeartbeatRecord.of_this_process(instance, mode, self.interval)
        self._thread = threading.Thread(target=self._run, name="uploader-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._write()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._write(stopped=True)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            probe = self._probe
            if probe is not None:
                last = probe.last_answer
                if last is None or time.time() - last >= self.interval:
                    try:
                        probe.probe()
                    except Exception as exc:  # noqa: BLE001 - a failed probe is only "no answer"
                        logger.debug("platform probe failed: %s", exc)
            self._write()

    def _write(self, *, stopped: bool = False) -> None:
        now = time.time()
        record = HeartbeatRecord(
            **{
                **asdict(self._base),
                "updated_at": now,
                "last_platform_answer_at": None if self._probe is None else self._probe.last_answer,
                "watcher_alive": self._watcher_alive(),
                "stopped_at": now if stopped else None,
            }
        )
        data = json.dumps(asdict(record), indent=1).encode("utf-8")
        try:
            write_atomic(self.path, data, sync_dir=False)
        except SharedError as exc:
            logger.warning(
                "cannot write the health heartbeat: %s", exc, extra={"path": str(self.path)}
            )


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    return True


def heartbeat_problems(
    record: HeartbeatRecord, *, max_silence: float, now: float | None = None
) -> list[str]:
    """What is wrong with the uploader the heartbeat describes (empty: nothing)."""
    now = time.time() if now is None else now
    problems: list[str] = []
    if record.stopped_at is not None:
        why = f": {record.stopped_because}" if record.stopped_because else ""
        return [f"the uploader (pid {record.pid}) stopped at {_when(record.stopped_at)}{why}"]
    if record.host == socket.gethostname() and not _pid_alive(record.pid):
        return [
            f"the uploader (pid {record.pid}) is gone; its last heartbeat was at "
            f"{_when(record.updated_at)}"
        ]
    stale_after = STALE_INTERVALS * record.interval
    if now - record.updated_at > stale_after:
        problems.append(
            f"the uploader's heartbeat is {now - record.updated_at:.0f} s old (pid {record.pid}, "
            f"expected every {record.interval:g} s): stuck or gone"
        )
    if record.watcher_alive is False:
        problems.append("the file watcher (watchdog observer) is dead")
    since = record.last_platform_answer_at
    silent_for = now - (since if since is not None else record.started_at)
    if silent_for > max_silence:
        last = (
            "never since start: down, unreachable, or refusing OPENCTI_TOKEN"
            if since is None
            else f"last at {_when(since)}"
        )
        problems.append(
            f"OpenCTI has not answered for {silent_for:.0f} s ({last}; "
            f"UPLOADER_HEALTH_MAX_SILENCE is {max_silence:g} s)"
        )
    return problems


def pending_problem(oldest: str | None, age: float | None, *, max_pending_age: float) -> str | None:
    """The oldest pending file, if it is older than ``max_pending_age``."""
    if oldest is None or age is None or age <= max_pending_age:
        return None
    return (
        f"the oldest pending file is {age:.0f} s old ({oldest}; "
        f"UPLOADER_HEALTH_MAX_PENDING_AGE is {max_pending_age:g} s)"
    )


def health_problems(
    spool: Spool, instance: str, *, max_silence: float, max_pending_age: float
) -> list[str]:
    """Everything wrong with the uploader ``instance`` of ``spool`` (empty: healthy)."""
    path = heartbeat_path(spool, instance).absolute()
    try:
        record = HeartbeatRecord.read(path)
    except FileNotFoundError:
        return [
            f"no heartbeat at {path}: no uploader with instance {instance!r} has run on this "
            "spool (are SPOOL_DIR and UPLOADER_INSTANCE_ID right?)"
        ]
    except (OSError, ValueError) as exc:
        return [f"cannot read {path}: {exc}"]
    problems = heartbeat_problems(record, max_silence=max_silence)
    spool_state = status(spool)
    pending = pending_problem(
        spool_state.oldest_pending, spool_state.oldest_pending_age, max_pending_age=max_pending_age
    )
    if pending is not None:
        problems.append(pending)
    return problems


def health_line(problems: list[str]) -> str:
    if not problems:
        return "healthy"
    more = (
        f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
    )
    return f"unhealthy: {problems[0]}{more}"
