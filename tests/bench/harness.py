"""Shared pieces of the benchmarks: stand-ins that time what they receive, child processes whose
peak RSS is measured exactly (``wait4``), fast spool generation, and statistics."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shared.durable import sha256_bytes
from shared.layout import SpoolName, relative_path
from tests.standins.opencti import OpenCTIStandIn
from tests.standins.opencti_graphql import Request as _Request

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
TOKEN = "bench-opencti-token-4d2c"


def tool(name: str) -> str:
    local = BIN / name
    return str(local) if local.exists() else name


class TimedOpenCTI(OpenCTIStandIn):
    """The OpenCTI stand-in, plus the monotonic time of every request and of every accepted push.

    ``keep_bundles=False`` drops each pushed bundle after recording it (its id and object count are
    kept), so a 100,000-file run does not hold every bundle in the bench's memory.
    """

    def __init__(self, *args: Any, keep_bundles: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_bundles = keep_bundles
        self.times: list[tuple[float, str]] = []
        #: (time received, bundle id) of every accepted push.
        self.push_times: list[tuple[float, str]] = []
        self.pushed = threading.Condition(self.lock)

    def answer(self, request: _Request, authorised: bool) -> tuple[int, dict[str, Any]]:
        received = time.monotonic()
        with self.lock:
            before = len(self.pushes)
            result = super().answer(request, authorised)
            self.times.append((received, request.operation))
            if len(self.pushes) > before:
                push = self.pushes[-1]
                self.push_times.append((received, str(push.bundle.get("id"))))
                if not self.keep_bundles:
                    push.bundle = {"id": push.bundle.get("id"), "objects": []}
                self.pushed.notify_all()
        return result

    def first(self, operation: str) -> float | None:
        with self.lock:
            return next((t for t, op in self.times if op == operation), None)

    def last(self, operation: str) -> float | None:
        with self.lock:
            return next((t for t, op in reversed(self.times) if op == operation), None)

    def wait_push(self, bundle_id: str | None, timeout: float) -> float | None:
        """Time the push of ``bundle_id`` (None: any push) was received, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout

        def found() -> float | None:
            for when, ident in self.push_times:
                if bundle_id is None or ident == bundle_id:
                    return when
            return None

        with self.pushed:
            while True:
                when = found()
                if when is not None:
                    return when
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.pushed.wait(min(left, 0.05))


def pss_kib(pid: int) -> int | None:
    """The process's proportional set size now (``Pss`` of ``smaps_rollup``): its private pages
    plus its share of each page it shares with other processes. None once it is gone."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", b"Pss:")


def vm_hwm_kib(pid: int) -> int | None:
    """The process's own peak RSS (``VmHWM`` of its address space), None once it is gone."""
    return _proc_kib(f"/proc/{pid}/status", b"VmHWM:")


def _proc_kib(path: str, key: bytes) -> int | None:
    """The kB value of the line starting with ``key`` in a /proc file, None if unreadable."""
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (every thread's), [] once it is gone."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", "rb") as fh:
                found.extend(int(p) for p in fh.read().split())
    except (OSError, ValueError):
        pass
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``: its children, theirs, and so on (a process a child forks is
    counted too)."""
    found: list[int] = []
    todo = child_pids(pid)
    while todo:
        found.append(todo.pop())
        todo.extend(child_pids(found[-1]))
    return found


def cmdline(pid: int) -> bytes | None:
    """The process's command line as the kernel has it, None once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return None


@dataclass
class Child:
    """A child process whose peak RSS is measured while it runs (:meth:`wait`).

    The peak is the child's ``VmHWM``, read every few milliseconds until it exits. ``wait4``'s
    ``ru_maxrss`` is not used for it: Linux carries the parent's high-water mark into a process
    across ``vfork``/``exec``, so every child "peaked" at least at the bench process's own peak
    (a child running ``pass`` from a parent of 500 MiB reports 513 MiB). That inflated the
    big-bundle and scale figures measured before 2026-11-30.
    """

    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    started: float = field(init=False)
    ended: float | None = None
    peak_rss_kib: int | None = None
    #: Peak ``VmHWM`` of each process the child started (at any depth), by pid.
    helper_peaks_kib: dict[int, int] = field(default_factory=dict)
    #: The greatest sum of the PSS of the child and every process it started, over the samples.
    tree_pss_kib: int = 0
    #: User + system CPU seconds of the child (and the children it waited for), from ``wait4``.
    cpu: float | None = None
    #: ``ru_maxrss`` from ``wait4``, kept for comparison only (see the class docstring).
    wait4_maxrss_kib: int | None = None
    returncode: int | None = None
    _cmdline: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._log = self.log.open("ab")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.returncode is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 600) -> int:
        if self.returncode is not None:
            return self.returncode
        deadline = time.monotonic() + timeout
        hwm = 0
        while True:
            hwm = max(hwm, vm_hwm_kib(self.proc.pid) or 0)
            self.sample_helpers()
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                self.proc.kill()
                pid, status, usage = os.wait4(self.proc.pid, 0)
                break
            time.sleep(0.005)
        self.ended = time.monotonic()
        self.returncode = os.waitstatus_to_exitcode(status)
        # Popen must not try to reap it again.
        self.proc.returncode = self.returncode
        self.wait4_maxrss_kib = usage.ru_maxrss  # KiB on Linux
        self.cpu = usage.ru_utime + usage.ru_stime
        self.peak_rss_kib = hwm or usage.ru_maxrss
        self._log.close()
        return self.returncode

    def sample_helpers(self) -> None:
        """Record the peak RSS of the processes the child runs now (they may end before it), and
        the sum of their PSS and the child's (:attr:`memory_peak_kib`).

        Between fork and exec a child still shares its parent's memory and reports the parent's
        peak: a helper is read only once its command line is no longer the parent's (exec has
        happened, so what is read next is its own), and the last value read is kept (after exec
        its own peak only grows). Without the command line check, a short-lived helper caught
        before its exec (the ``ldconfig -p`` that ``ctypes.util.find_library`` runs while pycti is
        imported) added the uploader's memory of that moment, 43 MiB, to one big-bundle run in
        a few.
        """
        own = self._cmdline
        if own is None:
            own = self._cmdline = cmdline(self.proc.pid)
        pss = pss_kib(self.proc.pid) or 0
        for helper in descendants(self.proc.pid):
            line = cmdline(helper)
            if line is None or line == own:
                continue
            peak = vm_hwm_kib(helper)
            if peak:
                self.helper_peaks_kib[helper] = peak
                pss += pss_kib(helper) or 0
        self.tree_pss_kib = max(self.tree_pss_kib, pss)

    @property
    def tree_peak_kib(self) -> int:
        """The child's peak plus the peak of every process it started (all at once, at worst)."""
        assert self.peak_rss_kib is not None
        return self.peak_rss_kib + sum(self.helper_peaks_kib.values())

    @property
    def memory_peak_kib(self) -> int:
        """Memory of a program that may run several processes: the greatest sum, over the samples,
        of the proportional set size (PSS) of the child and every process it started, or the
        child's own ``VmHWM`` if that is greater (a lone process: its exact peak).

        Not the sum of each process's peak (:attr:`tree_peak_kib`): a parent and the processes
        it forks share most of their pages, and their peaks need not coincide; PSS
        counts a shared page once across the processes that share it, as a cgroup memory limit
        counts it.
        """
        assert self.peak_rss_kib is not None
        return max(self.peak_rss_kib, self.tree_pss_kib)

    @property
    def wall(self) -> float:
        assert self.ended is not None
        return self.ended - self.started

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_text(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log.read_text(errors="replace"):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False


def base_env() -> dict[str, str]:
    prefixes = ("OPENCTI_", "CONNECTOR_", "MQ_", "UPLOADER_", "SPOOL_", "CYBERTHREATEXCHANGE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def uploader_env(spool: Path, opencti: OpenCTIStandIn, **extra: str) -> dict[str, str]:
    env = {
        **base_env(),
        "SPOOL_DIR": str(spool),
        "OPENCTI_URL": opencti.url,
        "OPENCTI_TOKEN": opencti.token,
        "CONNECTOR_ID": str(uuid.uuid4()),
        "CONNECTOR_LOG_LEVEL": "warn",
        "UPLOADER_INSTANCE_ID": "bench",
        "UPLOADER_RETRY_INITIAL": "0.2",
        "UPLOADER_RETRY_MAX": "1",
    }
    env.update(extra)
    return env


# Spool generation ------------------------------------------------------------------------------

FEED_IDS = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-feed-{i}")) for i in range(64)]
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def small_bundle(index: int, seed: str = "b") -> tuple[str, bytes]:
    """A small valid STIX bundle (a report and one indicator, ~900 bytes): (bundle id, bytes)."""
    ind = f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-i-{index}')}"
    rep = f"report--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-r-{index}')}"
    bundle_id = f"bundle--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-b-{index}')}"
    stamp = "2025-01-01T00:00:00.000Z"
    bundle = {
        "type": "bundle",
        "id": bundle_id,
        "objects": [
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": ind,
                "created": stamp,
                "modified": stamp,
                "name": f"bench indicator {index}",
                "pattern": f"[ipv4-addr:value = '10.{index % 250}.{index // 250 % 250}.1']",
                "pattern_type": "stix",
                "valid_from": stamp,
            },
            {
                "type": "report",
                "spec_version": "2.1",
                "id": rep,
                "created": stamp,
                "modified": stamp,
                "name": f"bench report {index}",
                "published": stamp,
                "object_refs": [ind],
            },
        ],
    }
    return bundle_id, json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()


def write_spool_files(
    state_dir: Path,
    count: int,
    *,
    feeds: int,
    seed: str = "b",
    durable: bool = False,
    per_day: int = 2000,
) -> list[tuple[Path, str]]:
    """``count`` small bundles named per the contract, spread round-robin over ``feeds`` feeds.

    Plain writes (no fsync) unless ``durable``: this is test data, generated fast. Returns (path,
    bundle id) of every file in name order within each feed.
    """
    made: list[tuple[Path, str]] = []
    dirs: set[Path] = set()
    for i in range(count):
        feed = FEED_IDS[i % feeds]
        n = i // feeds
        modified = BASE_TIME + timedelta(days=n // per_day, microseconds=n % per_day)
        bundle_id, data = small_bundle(i, seed)
        subject = f"report--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-r-{i}')}"
        rel = relative_path(feed, SpoolName(modified, subject, sha256_bytes(data)))
        path = state_dir.joinpath(*rel.parts)
        if path.parent not in dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(path.parent)
        with path.open("wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        made.append((path, bundle_id))
    return made


# Statistics ---------------------------------------------------------------------------------


@dataclass
class Series:
    """Several runs of one measurement."""

    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.values), max(self.values)

    @classmethod
    def ratios(cls, numerators: Sequence[float], denominators: Sequence[float]) -> Series:
        """Each run's pair divided: ``numerators[i] / denominators[i]`` (set-ups run alternately)."""
        return cls([n / d for n, d in zip(numerators, denominators, strict=True)])

    @classmethod
    def differences(cls, minuends: Sequence[float], subtrahends: Sequence[float]) -> Series:
        """Each run's pair subtracted: ``minuends[i] - subtrahends[i]``."""
        return cls([m - s for m, s in zip(minuends, subtrahends, strict=True)])

    def fmt(self, unit: str = "s", digits: int = 2) -> str:
        lo, hi = self.spread
        return f"{self.median:.{digits}f} {unit} (min {lo:.{digits}f}, max {hi:.{digits}f}, n={len(self.values)})"


def repeat(runs: int, fn: Callable[[int], float]) -> Series:
    return Series([fn(i) for i in range(runs)])


def max_rate(times: Sequence[float], window: float = 1.0) -> float:
    """The most requests seen in any ``window``-second interval, per second."""
    ordered = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(ordered):
        while j < len(ordered) and ordered[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best / window


def rss_mib(kib: int | None) -> float:
    return (kib or 0) / 1024


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()
