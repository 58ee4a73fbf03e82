"""Shared machinery of the reliability suite: real CLI processes, spool checks, results.

Every scenario runs ``ctx-fetcher`` / ``ctx-uploader`` as separate processes against the stand-ins
(which run in threads of the test process), records one row of figures with :func:`record`, and
asserts on the same figures, so every number in the table is one an assertion checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from fetcher.stix import canonical_json
from shared.durable import publish_bytes, sha256_bytes
from shared.layout import SpoolName, parse_relative_path, relative_path, walk_bundles
from tests.bundles import make_bundle

FULL = os.environ.get("CTX_RELIABILITY_FULL") == "1"
BIN = Path(sys.executable).parent
FETCHER = BIN / "ctx-fetcher"
UPLOADER = BIN / "ctx-uploader"

#: Distinctive secrets used by every scenario, scanned for everywhere at the end of each test.
API_KEY = "rel-ctx-key-Q7v2Lx9PzK4m"
OPENCTI_TOKEN = "rel-octi-token-W3n8Rb5TyH1c"
SECRETS = (API_KEY, OPENCTI_TOKEN)

CTX_SHAPE: dict[str, int] = {"feeds": 2, "reports": 8, "orphans": 12, "seed": 7}


def runs(default: int, full: int) -> int:
    """How many runs a scenario makes: the reduced count in `make test`, the full one otherwise."""
    return full if FULL else default


@dataclass
class Row:
    scenario: str
    runs: int
    faults: int
    files: int
    lost: int
    duplicated: int
    failed_wrongly: int
    note: str = ""


RESULTS: list[Row] = []


def record(row: Row) -> Row:
    RESULTS.append(row)
    return row


def results_table(rows: Iterable[Row]) -> str:
    lines = [
        "| Scenario | Runs | Faults injected | Files | Lost | Duplicated | Failed wrongly |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        name = f"{r.scenario} ({r.note})" if r.note else r.scenario
        lines.append(
            f"| {name} | {r.runs} | {r.faults} | {r.files} | {r.lost} | {r.duplicated} "
            f"| {r.failed_wrongly} |"
        )
    return "\n".join(lines) + "\n"


def base_env() -> dict[str, str]:
    """The test process's environment without any setting of ours or pycti's."""
    prefixes = ("OPENCTI_", "CONNECTOR_", "MQ_", "UPLOADER_", "SPOOL_", "CYBERTHREATEXCHANGE_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def fetcher_env(
    base_url: str, feed_ids: Iterable[str], spool_dir: Path, **extra: str
) -> dict[str, str]:
    env = {
        **base_env(),
        "CYBERTHREATEXCHANGE_BASE_URL": base_url,
        "CYBERTHREATEXCHANGE_API_KEY": API_KEY,
        "CYBERTHREATEXCHANGE_FEED_IDS": ",".join(feed_ids),
        "CYBERTHREATEXCHANGE_BACKOFF_FACTOR": "0.01",
        "CYBERTHREATEXCHANGE_MAX_RETRIES": "3",
        "CYBERTHREATEXCHANGE_CONNECT_TIMEOUT": "2",
        "CYBERTHREATEXCHANGE_READ_TIMEOUT": "5",
        "CONNECTOR_LOG_LEVEL": "debug",
        "SPOOL_DIR": str(spool_dir),
    }
    env.update(extra)
    return env


def uploader_env(url: str, spool_dir: Path, instance: str, **extra: str) -> dict[str, str]:
    env = {
        **base_env(),
        "SPOOL_DIR": str(spool_dir),
        "OPENCTI_URL": url,
        "OPENCTI_TOKEN": OPENCTI_TOKEN,
        "CONNECTOR_ID": "4c1f0f5e-8f0a-4d35-9a43-2b7f6c1d9e01",
        "CONNECTOR_LOG_LEVEL": "debug",
        "UPLOADER_INSTANCE_ID": instance,
        "UPLOADER_RETRY_INITIAL": "0.2",
        "UPLOADER_RETRY_MAX": "1",
        "UPLOADER_CONCURRENCY": "3",
        "UPLOADER_SETTLE_SECONDS": "1",
        "UPLOADER_RESCAN_INTERVAL": "2",
    }
    env.update(extra)
    return env


class Proc:
    """A CLI process whose stdout and stderr are read line by line in the background."""

    #: Every process started in this test session (their output is scanned for secrets).
    started: ClassVar[list[Proc]] = []

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.argv = argv
        self.lines: list[str] = []
        self.out: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=preexec_fn,
        )
        Proc.started.append(self)
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self.cond:
                sink.append(line)
                self.cond.notify_all()
        stream.close()

    def wait_for_line(self, needle: str, timeout: float = 30) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: any(needle in line for line in self.lines) or self.proc.poll() is not None,
                timeout=timeout,
            ) and any(needle in line for line in self.lines)

    def wait(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait(30)

    @property
    def stderr(self) -> str:
        with self.cond:
            return "".join(self.lines)

    @property
    def stdout(self) -> str:
        with self.cond:
            return "".join(self.out)

    def text(self) -> str:
        return f"$ {' '.join(self.argv)}\n{self.stdout}{self.stderr}"


def fetcher(args: list[str], env: dict[str, str], cwd: Path, **kw: Any) -> Proc:
    return Proc([str(FETCHER), *args], env, cwd, **kw)


def uploader(args: list[str], env: dict[str, str], cwd: Path, **kw: Any) -> Proc:
    return Proc([str(UPLOADER), *args], env, cwd, **kw)


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def bundles(root: Path) -> list[str]:
    return [e.relative.as_posix() for e in walk_bundles(root)]


def sha_ok(path: Path) -> bool:
    name = SpoolName.parse(path.name)
    return hashlib.sha256(path.read_bytes()).hexdigest() == name.sha256


def file_ids(path: Path) -> set[str]:
    return {str(o["id"]) for o in json.loads(path.read_bytes())["objects"]}


def subjects(root: Path) -> list[str]:
    """The subject (report id or ``objects``) of every bundle under ``root``, one per file."""
    out = []
    for rel in bundles(root):
        _feed, name = parse_relative_path(rel)
        out.append(name.subject)
    return out


def cursors(spool_dir: Path) -> dict[tuple[str, str], str]:
    db_path = spool_dir / ".fetcher" / "fetcher.sqlite3"
    if not db_path.exists():
        return {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {(f, n): v for f, n, v in db.execute("SELECT feed_id, name, value FROM cursors")}
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


@dataclass
class PartialWatch:
    """A thread that polls ``incoming/`` and checks every visible ``.json`` against its name."""

    root: Path
    interval: float = 0.005
    seen: dict[str, bool] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PartialWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        self.samples += 1
        for entry in walk_bundles(self.root):
            key = entry.relative.as_posix()
            if key in self.seen:
                continue
            try:
                self.seen[key] = sha_ok(entry.path)
            except FileNotFoundError:
                continue

    @property
    def partial(self) -> list[str]:
        return [k for k, ok in self.seen.items() if not ok]


def scan_for_secrets(
    texts: Iterable[tuple[str, str]], roots: Iterable[Path]
) -> tuple[int, list[str]]:
    """(items scanned, where a secret appeared) over texts (label, text) and every file under roots."""
    scanned = 0
    leaks: list[str] = []
    needles = [s.encode() for s in SECRETS]
    for label, text in texts:
        scanned += 1
        if any(s in text for s in SECRETS):
            leaks.append(label)
    for root in roots:
        for path in _files(root):
            scanned += 1
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                leaks.append(str(path))
    return scanned, leaks


def _files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                yield path


def bundle_bytes(seed: str, n: int = 3) -> bytes:
    """A small valid report bundle with deterministic ids, as the fetcher would write it."""
    objects: list[dict[str, Any]] = []
    for i in range(n):
        objects.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-{i}')}",
                "created": "2024-05-01T10:00:00.000Z",
                "modified": "2024-05-01T10:00:00.000Z",
                "name": f"indicator {seed} {i}",
                "pattern": "[ipv4-addr:value = '10.0.0.1']",
                "pattern_type": "stix",
                "valid_from": "2024-05-01T10:00:00Z",
            }
        )
    return canonical_json(make_bundle(objects))


def fill_spool(spool_dir: Path, feeds: int, per_feed: int, tag: str = "") -> dict[str, str]:
    """Publish ``feeds * per_feed`` bundles into ``incoming/``; returns {relative path: bundle id}."""
    out: dict[str, str] = {}
    for f in range(feeds):
        feed = str(uuid.uuid5(uuid.NAMESPACE_URL, f"reliability-feed-{tag}-{f}"))
        for i in range(per_feed):
            seed = f"{tag}-{f}-{i}"
            data = bundle_bytes(seed)
            name = SpoolName(
                datetime(2024, 5, 1, tzinfo=UTC) + timedelta(minutes=i),
                f"report--{uuid.uuid5(uuid.NAMESPACE_URL, seed)}",
                sha256_bytes(data),
            )
            rel = relative_path(feed, name)
            publish_bytes(spool_dir / "incoming" / rel, data)
            out[rel.as_posix()] = json.loads(data)["id"]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def states_of(spool_dir: Path) -> dict[str, list[str]]:
    """Bundles per state; ``processing`` relative to each instance folder."""
    out = {s: bundles(spool_dir / s) for s in ("incoming", "done", "failed")}
    out["processing"] = [
        rel.split("/", 1)[1] for rel in bundles(spool_dir / "processing") if "/" in rel
    ]
    return out
