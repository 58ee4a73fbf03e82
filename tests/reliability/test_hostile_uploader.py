"""Hostile inputs to the uploader: one real ``ctx-uploader once`` over a spool full of them.

Every kind sits in its own feed folder (when it has one) ahead of a good file of the same feed, so a
bad file that blocked its feed would show. The uploader runs without the DAC override capabilities
(``setpriv``), so file modes apply to it although the tests run as root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fetcher.stix import canonical_json
from shared.durable import sha256_bytes
from shared.layout import SpoolName, relative_path, walk_bundles
from tests.bundles import make_bundle
from tests.reliability import harness
from tests.reliability.harness import Row, record
from tests.standins.opencti import OpenCTIStandIn

BASE = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
SETPRIV = shutil.which("setpriv")


def feed_of(case: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile-{case}"))


def objects(seed: str, n: int = 2, pad: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}-{i}')}",
                "created": "2024-05-01T10:00:00.000Z",
                "modified": "2024-05-01T10:00:00.000Z",
                "name": f"indicator {seed} {i}",
                "description": "x" * pad,
                "pattern": "[ipv4-addr:value = '10.0.0.1']",
                "pattern_type": "stix",
                "valid_from": "2024-05-01T10:00:00Z",
            }
        )
    return out


def good_bytes(seed: str, n: int = 2) -> bytes:
    return canonical_json(make_bundle(objects(seed, n)))


def name_for(data: bytes, minutes: int, seed: str, sha: str | None = None) -> SpoolName:
    subject = f"report--{uuid.uuid5(uuid.NAMESPACE_URL, seed)}"
    return SpoolName(BASE + timedelta(minutes=minutes), subject, sha or sha256_bytes(data))


@dataclass
class Case:
    """One hostile input: where it is and what must become of it."""

    id: str
    #: "failed" (with a reason of one of ``kinds``), "left" (untouched, error logged),
    #: "ignored" (untouched, no reason), "done", "gone" (vanished; nowhere in the spool).
    expect: str
    path: Path | None = None
    rel: str | None = None
    kinds: tuple[str, ...] = ()
    log: str = ""
    good: list[str] = field(default_factory=list)
    #: Run while the uploader runs, once ``trigger`` is in its log.
    trigger: str = ""
    during: Callable[[], None] | None = None
    check: Callable[[Path], list[str]] | None = None


class Builder:
    def __init__(self, root: Path, outside: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.outside = outside
        self.cases: list[Case] = []

    def put(
        self,
        case: str,
        data: bytes,
        *,
        sha: str | None = None,
        feed: str | None = None,
        good: bool = True,
    ) -> tuple[Path, str, list[str]]:
        feed = feed or feed_of(case)
        rel = relative_path(feed, name_for(data, 1, case, sha)).as_posix()
        path = self.incoming / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        goods = [self.good(feed, case)] if good else []
        return path, rel, goods

    def good(self, feed: str, case: str) -> str:
        data = good_bytes(f"good-{case}")
        rel = relative_path(feed, name_for(data, 5, f"good-{case}")).as_posix()
        path = self.incoming / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return rel

    def content(self, case: str, data: bytes, expect: str, *kinds: str, **kw: Any) -> None:
        path, rel, goods = self.put(case, data)
        self.cases.append(Case(case, expect, path, rel, kinds, good=goods, **kw))


def nested(depth: int) -> bytes:
    inner = "[" * depth + "]" * depth
    return (
        '{"type":"bundle","id":"bundle--0d9d4c1e-1f5e-4c1b-9a9e-6b9f0d1e2a3b","objects":'
        '[{"type":"indicator","id":"indicator--0d9d4c1e-1f5e-4c1b-9a9e-6b9f0d1e2a3c","x":'
        + inner
        + "}]}"
    ).encode()


def build_cases(root: Path, outside: Path) -> Builder:
    b = Builder(root, outside)
    bundle_id = "bundle--5b1c6e7a-3d1f-4c2e-8a9b-0c1d2e3f4a5b"
    ind = objects("dup", 1)[0]

    b.content("malformed-json", b'{"type": "bundle", "objects": [', "failed", "not-json")
    b.content("json-list", b"[1, 2, 3]", "failed", "not-a-bundle")
    b.content("json-null", b"null", "failed", "not-a-bundle")
    b.content("json-string", b'"bundle"', "failed", "not-a-bundle")
    b.content("not-a-bundle-type", json.dumps({**ind}).encode(), "failed", "not-a-bundle")
    b.content(
        "empty-objects",
        json.dumps({"type": "bundle", "id": bundle_id, "objects": []}).encode(),
        "failed",
        "empty",
    )
    b.content(
        "missing-objects",
        json.dumps({"type": "bundle", "id": bundle_id}).encode(),
        "failed",
        "empty",
    )
    b.content(
        "objects-not-list",
        json.dumps({"type": "bundle", "id": bundle_id, "objects": {"a": ind}}).encode(),
        "failed",
        "invalid-bundle",
    )
    b.content(
        "object-without-id",
        json.dumps(
            {"type": "bundle", "id": bundle_id, "objects": [{"type": "indicator"}]}
        ).encode(),
        "failed",
        "invalid-bundle",
    )
    b.content(
        "object-not-a-dict",
        json.dumps({"type": "bundle", "id": bundle_id, "objects": ["indicator--x"]}).encode(),
        "failed",
        "invalid-bundle",
    )
    b.content("non-utf8", b'{"type": "bundle", "objects": ["\xff\xfe\xfa"]}', "failed", "not-json")
    b.content(
        "utf16-bom", '{"type": "bundle", "objects": []}'.encode("utf-16"), "failed", "not-json"
    )
    b.content("utf8-bom", b"\xef\xbb\xbf" + good_bytes("bom"), "failed", "not-json")
    b.content("zero-bytes", b"", "failed", "not-json")
    b.content("nul-bytes", b"\x00" * 4096, "failed", "not-json")
    b.content("deeply-nested-json", nested(200_000), "failed", "not-json")
    b.content(
        "duplicate-object-ids",
        json.dumps({"type": "bundle", "id": bundle_id, "objects": [ind, ind, ind]}).encode(),
        "done",
    )
    b.content(
        "duplicate-json-keys",
        b'{"type":"bundle","type":"bundle","id":"'
        + bundle_id.replace("5b", "6c").encode()
        + b'","objects":'
        + json.dumps([ind]).encode()
        + b"}",
        "done",
    )
    big = canonical_json(make_bundle(objects("big", 3000, pad=20_000)))
    assert len(big) > 60 * 10**6

    def two_pushes(root: Path) -> list[str]:
        done = root / "done" / big_rel
        receipt = json.loads(done.with_name(done.name + ".receipt").read_text())
        return [] if receipt["pushes"] >= 2 else [f"60 MB bundle sent in {receipt['pushes']} push"]

    path, rel, goods = b.put("60mb-bundle", big)
    big_rel = rel
    b.cases.append(Case("60mb-bundle", "done", path, rel, good=goods, check=two_pushes))
    b.content(
        "one-object-over-push-limit",
        canonical_json(make_bundle(objects("huge-one", 1, pad=55 * 10**6))),
        "failed",
        "rejected",
    )

    data = good_bytes("mismatch")
    path, rel, goods = b.put("digest-mismatch", data, sha="0" * 64)
    b.cases.append(Case("digest-mismatch", "failed", path, rel, ("corrupt",), good=goods))

    data = good_bytes("truncated", 40)
    path, rel, goods = b.put("truncated-mid-copy", data[: len(data) // 2], sha=sha256_bytes(data))
    b.cases.append(Case("truncated-mid-copy", "failed", path, rel, ("corrupt",), good=goods))

    data = good_bytes("late", 40)
    path, rel, goods = b.put("copy-completes-late", data[:100], sha=sha256_bytes(data))
    late = path

    def finish_copy(late: Path = late, rest: bytes = data[100:]) -> None:
        with late.open("ab") as fh:
            fh.write(rest)

    b.cases.append(
        Case(
            "copy-completes-late",
            "done",
            path,
            rel,
            good=goods,
            trigger=f"digest of {path.name} does not match",
            during=finish_copy,
        )
    )

    data = good_bytes("vanish", 40)
    path, rel, goods = b.put("vanishes-after-seen", data[:100], sha=sha256_bytes(data))
    vanishing = path
    b.cases.append(
        Case(
            "vanishes-after-seen",
            "gone",
            path,
            rel,
            good=goods,
            trigger=f"digest of {path.name} does not match",
            during=vanishing.unlink,
        )
    )

    target = outside / "outside.json"
    target.write_bytes(good_bytes("outside"))
    data = target.read_bytes()
    path, rel, goods = b.put("symlink-out-of-spool", b"")
    path.unlink()
    path.symlink_to(target)

    def target_untouched(root: Path, data: bytes = data) -> list[str]:
        return [] if target.read_bytes() == data else ["symlink target changed"]

    b.cases.append(
        Case(
            "symlink-out-of-spool",
            "failed",
            path,
            rel,
            ("symlink",),
            good=goods,
            check=target_untouched,
        )
    )

    path, rel, goods = b.put("symlink-to-etc-passwd", b"")
    path.unlink()
    path.symlink_to("/etc/passwd")
    b.cases.append(Case("symlink-to-etc-passwd", "failed", path, rel, ("symlink",), good=goods))

    path, rel, goods = b.put("dangling-symlink", b"")
    path.unlink()
    path.symlink_to(outside / "does-not-exist.json")
    b.cases.append(Case("dangling-symlink", "failed", path, rel, ("symlink",), good=goods))

    feed = feed_of("symlinked-feed-folder")
    real = outside / "feed-dir"
    data = good_bytes("in-symlinked-folder")
    rel = relative_path(feed, name_for(data, 1, "in-symlinked-folder")).as_posix()
    (real / Path(rel).parent.relative_to(feed)).mkdir(parents=True)
    (real / Path(rel).relative_to(feed)).write_bytes(data)
    (b.incoming / feed).symlink_to(real, target_is_directory=True)
    b.cases.append(
        Case("symlinked-feed-folder", "ignored", b.incoming / rel, rel, check=_untouched(real))
    )

    path, rel, goods = b.put("directory-named-json", b"")
    path.unlink()
    path.mkdir()
    (path / "inner.txt").write_text("not a bundle")
    b.cases.append(Case("directory-named-json", "ignored", path, rel, good=goods))

    path, rel, goods = b.put("fifo-named-json", b"")
    path.unlink()
    os.mkfifo(path)
    b.cases.append(Case("fifo-named-json", "left", path, rel, log="not a regular file", good=goods))

    path, rel, goods = b.put("unreadable-mode-000", good_bytes("unreadable"))
    path.chmod(0)
    b.cases.append(Case("unreadable-mode-000", "failed", path, rel, ("unreadable",), good=goods))

    feed = feed_of("unreadable-folder")
    data = good_bytes("unreadable-folder")
    rel = relative_path(feed, name_for(data, 1, "unreadable-folder")).as_posix()
    path = b.incoming / rel
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    path.parent.chmod(0)
    b.cases.append(Case("unreadable-folder", "ignored", path, rel, log="cannot list"))

    def named(case: str, rel: str, expect: str, *kinds: str, log: str = "") -> None:
        path = b.incoming / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(good_bytes(case))
        b.cases.append(Case(case, expect, path, rel, kinds, log=log))

    data = good_bytes("names")
    good_name = name_for(data, 1, "names").filename
    feed = feed_of("names")
    named("dotdot-in-name", f"{feed}/2024/05/01/a..b.json", "failed", "invalid-name")
    named(
        "dotdot-subject",
        f"{feed}/2024/05/01/20240501T100100000000Z_report--..-..-etc_{'a' * 64}.json",
        "failed",
        "invalid-name",
    )
    named("very-long-name", f"{feed}/2024/05/01/{'a' * 250}.json", "left", log="name is too long")
    named(
        "uppercase-sha",
        f"{feed}/2024/05/01/{good_name[:-69]}{'A' * 64}.json",
        "failed",
        "invalid-name",
    )
    named("not-a-uuid-feed", f"not-a-feed/2024/05/01/{good_name}", "failed", "invalid-name")
    named("uppercase-uuid-feed", f"{feed.upper()}/2024/05/01/{good_name}", "failed", "invalid-name")
    named("date-folder-mismatch", f"{feed}/1999/01/01/{good_name}", "failed", "invalid-name")
    named("top-level-file", good_name, "failed", "invalid-name")
    named("too-deep", f"{feed}/2024/05/01/extra/{good_name}", "failed", "invalid-name")
    named("spaces-and-unicode", f"{feed}/2024/05/01/rapport é ✓.json", "failed", "invalid-name")
    named("hidden-temp-file", f"{feed}/2024/05/01/.{good_name}.abc.tmp", "ignored")
    named("hidden-json", f"{feed}/2024/05/01/.{good_name}", "ignored")
    named("sidecar-in-incoming", f"{feed}/2024/05/01/{good_name}.receipt", "ignored")
    named("not-json-suffix", f"{feed}/2024/05/01/{good_name[:-5]}.JSON", "ignored")

    # A file left claimed by an uploader that died (no lock held): reclaimed, then refused.
    data = b"{ not json"
    feed = feed_of("claimed-by-dead-uploader")
    rel = relative_path(feed, name_for(data, 1, "claimed-by-dead-uploader")).as_posix()
    claimed = root / "processing" / "dead-uploader" / rel
    claimed.parent.mkdir(parents=True)
    claimed.write_bytes(data)
    # Its lock file exists and nobody holds it: the uploader that made it is gone.
    (root / "processing" / "dead-uploader" / ".lock").touch()
    b.cases.append(Case("claimed-by-dead-uploader", "failed", b.incoming / rel, rel, ("not-json",)))
    return b


def _untouched(directory: Path) -> Callable[[Path], list[str]]:
    before = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))

    def check(root: Path) -> list[str]:
        after = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))
        return [] if after == before else [f"{directory} changed: {after}"]

    return check


@dataclass
class HostileRun:
    root: Path
    cases: list[Case]
    proc: harness.Proc
    code: int
    pushed: dict[str, int]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileRun]:
    work = tmp_path_factory.mktemp("hostile")
    outside = work / "outside"
    outside.mkdir()
    root = work / "spool"
    (root / "incoming").mkdir(parents=True)
    built = build_cases(root, outside)
    with OpenCTIStandIn(harness.OPENCTI_TOKEN) as opencti:
        env = harness.uploader_env(
            opencti.url, root, "hostile", UPLOADER_SETTLE_SECONDS="3", UPLOADER_CONCURRENCY="4"
        )
        argv = [str(harness.UPLOADER), "once", "--max-wait", "30"]
        if SETPRIV is not None:
            # Root reads any file whatever its mode: drop that power so modes apply.
            argv = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
        proc = harness.Proc(argv, env, work)
        for case in built.cases:
            if case.during is not None:
                assert proc.wait_for_line(case.trigger, timeout=60), proc.text()
                case.during()
        code = proc.wait(240)
        (work / "uploader.log").write_text(proc.text())
        pushed: dict[str, int] = {}
        for push in opencti.pushes:
            pushed[str(push.bundle.get("id"))] = pushed.get(str(push.bundle.get("id")), 0) + 1
    yield HostileRun(root, built.cases, proc, code, pushed)
    for dirpath, dirs, _files in os.walk(work):
        for d in dirs:
            p = Path(dirpath, d)
            if not p.is_symlink():
                p.chmod(stat.S_IRWXU)


CASE_IDS = [
    "malformed-json", "json-list", "json-null", "json-string", "not-a-bundle-type",
    "empty-objects", "missing-objects", "objects-not-list", "object-without-id",
    "object-not-a-dict", "non-utf8", "utf16-bom", "utf8-bom", "zero-bytes", "nul-bytes",
    "deeply-nested-json", "duplicate-object-ids", "duplicate-json-keys", "60mb-bundle",
    "one-object-over-push-limit", "digest-mismatch", "truncated-mid-copy", "copy-completes-late",
    "vanishes-after-seen", "symlink-out-of-spool", "symlink-to-etc-passwd", "dangling-symlink",
    "symlinked-feed-folder", "directory-named-json", "fifo-named-json", "unreadable-mode-000",
    "unreadable-folder", "dotdot-in-name", "dotdot-subject", "very-long-name", "uppercase-sha",
    "not-a-uuid-feed", "uppercase-uuid-feed", "date-folder-mismatch", "top-level-file",
    "too-deep", "spaces-and-unicode", "hidden-temp-file", "hidden-json", "sidecar-in-incoming",
    "not-json-suffix", "claimed-by-dead-uploader",
]  # fmt: skip


def outcome_problems(run: HostileRun, case: Case) -> list[str]:
    root = run.root
    assert case.rel is not None
    rel = case.rel
    inc, done, failed = root / "incoming" / rel, root / "done" / rel, root / "failed" / rel
    exists = {p: p.exists() or p.is_symlink() for p in (inc, done, failed)}
    problems: list[str] = []
    log = run.proc.stderr
    if case.expect == "failed":
        if not exists[failed]:
            problems.append(f"not in failed/ (incoming {exists[inc]}, done {exists[done]})")
        else:
            reason = json.loads(failed.with_name(failed.name + ".reason").read_text())
            if reason["kind"] not in case.kinds:
                problems.append(f"reason kind {reason['kind']!r}, expected {case.kinds}")
            if not reason.get("message"):
                problems.append("reason without a message")
            if failed.name not in log:
                problems.append("refusal not logged")
    elif case.expect == "done":
        if not exists[done] or not done.with_name(done.name + ".receipt").is_file():
            problems.append(f"not in done/ with a receipt (incoming {exists[inc]})")
    elif case.expect in ("left", "ignored"):
        if not exists[inc]:
            problems.append("moved although it must be left where it is")
        if exists[done] or exists[failed]:
            problems.append("reached done/ or failed/")
        if case.log and case.log not in log:
            problems.append(f"no log line with {case.log!r}")
    elif case.expect == "gone" and any(exists.values()):
        problems.append(f"reappeared: {exists}")
    for good in case.good:
        if not (root / "done" / good).is_file():
            problems.append(f"good file of the same feed not imported: {good}")
    if case.check is not None:
        problems += case.check(root)
    return problems


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case_id", [pytest.param(c, id=c) for c in CASE_IDS])
def test_hostile_input(hostile: HostileRun, case_id: str) -> None:
    case = next(c for c in hostile.cases if c.id == case_id)
    problems = outcome_problems(hostile, case)
    assert problems == [], [
        line
        for line in hostile.proc.lines
        if case.id in line or (case.path is not None and case.path.name in line)
    ][-5:]


def test_hostile_run_summary(hostile: HostileRun) -> None:
    """The uploader kept running to the end, imported every good file once, leaked no secret."""
    assert {c.id for c in hostile.cases} == set(CASE_IDS)
    assert len(CASE_IDS) >= 30
    wrong = {c.id: p for c in hostile.cases if (p := outcome_problems(hostile, c))}
    goods = [g for c in hostile.cases for g in c.good]
    lost = [g for g in goods if not (hostile.root / "done" / g).is_file()]
    dup = sum(n - 1 for n in hostile.pushed.values() if n > 1)
    scanned, leaks = harness.scan_for_secrets(
        [("hostile uploader", hostile.proc.text())], [hostile.root]
    )
    record(
        Row(
            "Hostile inputs to the uploader",
            1,
            len(hostile.cases),
            len(hostile.cases) + len(goods),
            len(lost),
            dup,
            len(wrong),
            note=f"{len(CASE_IDS)} kinds, good files beside them",
        )
    )
    assert hostile.code in (1, 3), hostile.proc.text()[-3000:]
    assert "Traceback" not in hostile.proc.stderr, hostile.proc.stderr[-5000:]
    assert lost == []
    assert dup == 0
    assert wrong == {}
    assert leaks == [] and scanned > 0
    assert harness.bundles(hostile.root / "processing") == []
    assert [e for e in walk_bundles(hostile.root / "done") if e.is_symlink] == []
