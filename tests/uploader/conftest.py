"""Fixtures of the uploader tests: a spool in tmp_path, bundle files, a fake importer, and
``ctx-uploader`` run as a real process (``uploader_env``, ``launch``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fetcher.stix import canonical_json
from shared.durable import publish_bytes, sha256_bytes
from shared.layout import Spool, SpoolName, relative_path
from shared.signing import SigningKey
from tests.bundles import make_bundle
from tests.standins.opencti import OpenCTIStandIn
from uploader.commands.cli import main
from uploader.errors import PermanentImportError, TransientImportError
from uploader.importing.chunking import Bundle
from uploader.pipeline import Pipeline, RunSummary
from uploader.settings import UploaderSettings
from uploader.spool_ops.claim import InstanceLock
from uploader.spool_ops.origin import Origin
from uploader.spool_ops.outcome import ImportReceipt

FEED_A = "11111111-1111-4111-8111-111111111111"
FEED_B = "22222222-2222-4222-8222-222222222222"
FEED_C = "33333333-3333-4333-8333-333333333333"
BASE_TIME = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)


def report_objects(n: int = 1, seed: str = "") -> list[dict[str, Any]]:
    """A report and ``n`` indicators with deterministic ids."""
    objects: list[dict[str, Any]] = []
    refs = []
    for i in range(n):
        ident = f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-ind-{i}')}"
        refs.append(ident)
        objects.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": ident,
                "created": "2024-05-01T10:00:00.000Z",
                "modified": "2024-05-01T10:00:00.000Z",
                "name": f"indicator {i} {seed}",
                "pattern": f"[ipv4-addr:value = '10.0.0.{i % 250}']",
                "pattern_type": "stix",
                "valid_from": "2024-05-01T10:00:00Z",
            }
        )
    report_id = f"report--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-report')}"
    objects.append(
        {
            "type": "report",
            "spec_version": "2.1",
            "id": report_id,
            "created": "2024-05-01T10:00:00.000Z",
            "modified": "2024-05-01T10:00:00.000Z",
            "name": f"report {seed}",
            "published": "2024-05-01T10:00:00Z",
            "object_refs": refs or [report_id],
        }
    )
    return objects


@dataclass
class SpoolFiles:
    """Writes bundle files into a spool the way the fetcher does."""

    spool: Spool
    counter: int = 0

    def bundle_bytes(self, seed: str, n: int = 1) -> bytes:
        return canonical_json(make_bundle(report_objects(n, seed)))

    def add(
        self,
        feed: str = FEED_A,
        *,
        minutes: int | None = None,
        data: bytes | None = None,
        digest: str | None = None,
        state: str = "incoming",
        seed: str | None = None,
    ) -> Path:
        """Publish one bundle file; ``minutes`` after BASE_TIME sets its name's modified time."""
        self.counter += 1
        minutes = self.counter if minutes is None else minutes
        seed = seed or f"{feed}-{minutes}-{self.counter}"
        if data is None:
            data = self.bundle_bytes(seed)
        name = SpoolName(
            BASE_TIME + timedelta(minutes=minutes),
            f"report--{uuid.uuid5(uuid.NAMESPACE_URL, seed)}",
            digest or sha256_bytes(data),
        )
        path = self.spool.path_in(state, relative_path(feed, name))
        publish_bytes(path, data)
        return path

    def rel(self, path: Path, state: str = "incoming") -> str:
        return path.relative_to(self.spool.state_dir(state)).as_posix()


@dataclass
class FakeImporter:
    """Records every import; ``behaviour`` may raise to simulate the platform."""

    behaviour: Callable[[str, bytes], None] | None = None
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    origins: list[Origin | None] = field(default_factory=list)
    accepted: list[bytes] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    active: int = 0
    max_active: int = 0
    active_names: list[str] = field(default_factory=list)

    def import_bundle(
        self, work_name: str, checked: Bundle, origin: Origin | None = None
    ) -> ImportReceipt:
        bundle = checked.data
        with self.cond:
            self.calls.append((work_name, bundle))
            self.origins.append(origin)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.cond.notify_all()
        try:
            if self.behaviour is not None:
                self.behaviour(work_name, bundle)
        finally:
            with self.cond:
                self.active -= 1
                self.cond.notify_all()
        with self.cond:
            self.accepted.append(bundle)
            self.cond.notify_all()
        return ImportReceipt(f"work-{len(self.calls)}", "connector-1", 1, checked.objects)

    def wait_for(self, predicate: Callable[[FakeImporter], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout=timeout)


def transient_then_ok(times: int) -> Callable[[str, bytes], None]:
    """Raise TransientImportError ``times`` times for each bundle, then accept it."""
    seen: dict[bytes, int] = {}
    lock = threading.Lock()

    def behaviour(work_name: str, bundle: bytes) -> None:
        with lock:
            seen[bundle] = seen.get(bundle, 0) + 1
            count = seen[bundle]
        if count <= times:
            raise TransientImportError("connection refused (fake)")

    return behaviour


def permanent() -> Callable[[str, bytes], None]:
    def behaviour(work_name: str, bundle: bytes) -> None:
        raise PermanentImportError("bundle rejected (fake)", work_id="work-x")

    return behaviour


def pipeline_settings(**overrides: Any) -> UploaderSettings:
    """Settings of a pipeline under test: its importer is a fake, so the platform's address,
    token and connector id are placeholders (the token is still masked in reason files)."""
    values: dict[str, Any] = {
        "opencti_url": "http://opencti.invalid",
        "opencti_token": "pipeline-test-token",
        "connector_id": "2d7f8b3e-4c1a-4e5b-9f6d-0a1b2c3d4e5f",
    }
    values.update(overrides)
    return UploaderSettings(**values)


def fast_settings(**overrides: Any) -> UploaderSettings:
    """:func:`pipeline_settings` with short waits, so retries and rescans happen within a test."""
    values: dict[str, Any] = {
        "concurrency": 2,
        "settle_seconds": 0.3,
        "retry_initial": 0.05,
        "retry_max": 0.2,
        "rescan_interval": 0.5,
    }
    values.update(overrides)
    return pipeline_settings(**values)


def clean(summary: RunSummary) -> bool:
    """Whether a run left nothing behind: no failed, pending or untouched file."""
    return summary.failed == 0 and not summary.pending and not summary.left


def run_once(
    spool: Spool,
    importer: Any,
    *,
    instance: str = "test",
    max_wait: float | None = 30.0,
    signing_key: SigningKey | None = None,
    **overrides: Any,
) -> RunSummary:
    with InstanceLock(spool, instance) as lock:
        pipeline = Pipeline(
            spool, importer, fast_settings(**overrides), lock, signing_key=signing_key
        )
        return pipeline.run(threading.Event(), watch=False, max_wait=max_wait)


class RecordWaiter(logging.Handler):
    """Sets an event when a record whose message contains ``needle`` is logged."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.seen = threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.records.append(record)
            self.seen.set()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


@pytest.fixture
def files(spool: Spool) -> SpoolFiles:
    return SpoolFiles(spool)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures the root logger; put it back so tests do not leak handlers."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    urllib3_level = logging.getLogger("urllib3").level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("urllib3").setLevel(urllib3_level)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``predicate`` (a filesystem state) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ``ctx-uploader`` as a real process against the OpenCTI stand-in (``opencti_standin`` comes from
# tests.standins.fixtures, which the tests using these load).
UPLOADER = Path(sys.executable).with_name("ctx-uploader")


@pytest.fixture
def uploader_env(spool: Spool, opencti_standin: OpenCTIStandIn) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENCTI_", "CONNECTOR_", "MQ_", "UPLOADER_", "SPOOL_"))
    }
    return {
        **base,
        "SPOOL_DIR": str(spool.root),
        "OPENCTI_URL": opencti_standin.url,
        "OPENCTI_TOKEN": opencti_standin.token,
        "CONNECTOR_ID": str(uuid.uuid4()),
        "CONNECTOR_LOG_LEVEL": "info",
        "UPLOADER_INSTANCE_ID": "e2e",
        "UPLOADER_RETRY_INITIAL": "0.2",
        "UPLOADER_RETRY_MAX": "1",
        "UPLOADER_CONCURRENCY": "3",
    }


class Uploader:
    """A running ``ctx-uploader`` whose stderr is read line by line in the background."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [str(UPLOADER), *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_for_line(self, needle: str, timeout: float = 30) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: any(needle in line for line in self.lines), timeout=timeout
            )

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(10)
        return self.proc.returncode, out

    @property
    def stderr(self) -> str:
        with self.cond:
            return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    started: list[Uploader] = []

    def start(args: list[str], env: dict[str, str]) -> Uploader:
        uploader = Uploader(args, env, tmp_path)
        started.append(uploader)
        return uploader

    yield start
    for uploader in started:
        uploader.kill()
        for stream in (uploader.proc.stdout, uploader.proc.stderr):
            if stream is not None:
                stream.close()


# ``ctx-uploader`` through click's CliRunner: ``env`` is a clean environment for it.
@pytest.fixture
def env(spool: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # No ./config.yml of a developer's checkout may leak in.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("OPENCTI_", "CONNECTOR_", "UPLOADER_", "SPOOL_")):
            monkeypatch.delenv(name)
    return {
        "SPOOL_DIR": str(spool.root),
        "OPENCTI_URL": "http://127.0.0.1:9",
        "OPENCTI_TOKEN": "token-for-tests-1234",
        "CONNECTOR_ID": "0b7f1c6e-3c55-4a43-9d5f-6f5a1b6a8d11",
        "UPLOADER_INSTANCE_ID": "cli",
        "UPLOADER_RETRY_INITIAL": "0.05",
        "UPLOADER_RETRY_MAX": "0.1",
        "UPLOADER_SETTLE_SECONDS": "0.2",
    }


def invoke(args: list[str], env: dict[str, str], importer: Any = None, **obj: Any) -> Result:
    if importer is not None:
        obj["importer_factory"] = lambda settings: importer
    return CliRunner().invoke(main, args, env=env, obj=obj, catch_exceptions=False)


@pytest.fixture
def pycti_helpers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The pycti helpers :class:`PyctiImporter` builds when it connects, as pycti returns them."""
    import uploader.importing.opencti as opencti  # pycti only for the tests that ask

    built: list[Any] = []
    real = opencti.create_helper

    def recording(settings: UploaderSettings) -> tuple[Any, str | None]:
        helper, version = real(settings)
        built.append(helper)
        return helper, version

    monkeypatch.setattr(opencti, "create_helper", recording)
    return built
