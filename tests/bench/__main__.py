"""``python -m tests.bench [--quick] [--runs N] [NAME ...]``: run the benchmarks, write BENCHMARKS.md.

Names: fetch, upload, watch, scale, big (default: all). A full run (all benchmarks, not ``--quick``)
writes ``BENCHMARKS.md`` at the repository root; a partial or quick run only prints, unless
``--output`` says where to write.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.bench.cases import BENCHMARKS, Options, Result
from tests.bench.harness import REPO, log

NOTES = """\
## Findings and fixes

Profiles: py-spy (`py-spy record -f raw --threads`) on the child processes, tracemalloc for pycti's
share of the big-bundle peak. Each fix is a commit whose message gives its before/after, measured
side by side in one session.

Fixed:

- Stand-ins: answers were two writes without TCP_NODELAY, so every kept-alive request to the
  OpenCTI stand-in waited 40 ms for a delayed ACK (44 ms per request before, 1.8 ms after). The
  upload baseline was measuring that stall.
- Fetch, rate limit: the token bucket held a second's worth of tokens, so a second could see twice
  the limit (140/s with a limit of 100); requests are now spaced 1/rate apart.
- Fetch, objects listing: the cursor chain of the objects listing started only after every report
  bundle; both listings are now read ahead in their own threads when CONCURRENCY > 1
  (1.85x to 2.62x vs CONCURRENCY=1).
- Fetch, ledger: one synchronous SQLite commit per report; now one per page of reports with its
  cursor (4.31 s to 3.66 s per pass).
- Fetch, memory: each bundle was serialised twice; its bytes are now built from each object's
  canonical bytes (39 MiB bundle: 243 MiB to 205 MiB peak).
- Upload, pycti lock: one lock serialised every pycti call of every feed thread; it now only
  guards building the helper (test: 12 interleaved imports, each push in its own work). Small
  gain: 145 to 159 files/s at CONCURRENCY=2, 144 to 154 at 4 (3 alternating runs each, the two
  commits run from git worktrees). The 0.41x to 0.55x in that commit's message came from a flawed
  comparison in which both sides ran the new code (`python -c` from the checkout put it first
  on sys.path): it is noise, not a measurement.
- Watch latency: watchdog's inotify emitter sleeps up to 0.5 s to pair each rename; the uploader no
  longer waits for that pairing (median 350 ms to 6-9 ms).
- Scale: `status` built two path objects per file and kept them all (100,000 files: 3.3 s and
  150 MiB to 1.1 s and 39 MiB); the start-up scan walks one feed folder per loop turn and imports
  the feeds already listed (start to first push, median 5.5 s to 2.6 s).
- Big bundle, uploader: the parsed copy from the checks lived through the import and the push size
  was computed on an escaped copy of the text (383 MiB to 331 MiB).

Missed, and why:

- Fetch 4x: the objects listing is a cursor chain (~79 requests of 50 objects, with re-asks from the
  last fully seen timestamp), one round trip after the other at any concurrency: with 20 ms added
  per request it alone is over 2 s, against ~8.7 s for the whole pass at CONCURRENCY=1. Besides,
  the main thread publishes the files in order (fsync of each file and of its folder); the
  report-bundle phase on its own scales better (see its ratio above). Parallel per-type listings
  would shorten the chain but cannot cover unknown custom types, so they were not done.
- Upload 1.0x: per file, the uploader process spends about twice the CPU of the bare loop (1,000
  files: user 4.8 s + sys 1.7 s against 3.3 s + 0.4 s): the receipt and the durable move to done/
  (four fsyncs: receipt, its folder, done/ folder, claim folder; ~1.3 ms per file), reading and
  hashing, the claim rename and the checks; pycti and requests cost the same on both sides. On two
  cores shared with the stand-in and other test suites, two feed threads contend for the GIL, so
  feeds in parallel do not double the rate. No fsync was dropped.
- Big bundle: pycti's send_stix2_bundle parses the 40 MB text in its splitter and keeps ~93 MiB of
  split output while the request body is serialised (~130 MiB peak, tracemalloc), on top of the
  file's bytes and text (~80 MiB) and the ~75 MiB of an idle uploader with pycti loaded. Smaller
  pushes (UPLOADER_MAX_PUSH_BYTES) lower it (figure above) but stay over 4x. The fetcher holds the
  bundle's objects as Python dicts (~50 MiB) plus their canonical bytes and the file's bytes.
"""


def _machine() -> list[str]:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return [
        f"- nproc: {os.cpu_count()}",
        f"- memory: {mem}",
        f"- Python: {platform.python_version()} ({platform.platform()})",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    ]


def _mark(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "**MISS**")


def render(results: list[Result], command: str, elapsed: float) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Command: `{command}` (total {elapsed / 60:.1f} min). Machine:",
        "",
        *_machine(),
        "",
        "The machine is shared with other test runs: every comparison below is between set-ups "
        "measured in the same run, alternating; figures are medians with min/max over the runs.",
        "",
        "| benchmark | target | measured | result |",
        "| --- | --- | --- | --- |",
    ]
    for result in results:
        for row in result.rows:
            lines.append(f"| {row.benchmark} | {row.target} | {row.measured} | {_mark(row.ok)} |")
    for result in results:
        lines += ["", f"## {result.name}", "", *result.details]
    lines += ["", NOTES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller sizes")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per measurement (default 3, quick 2)"
    )
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    runs = args.runs or (2 if args.quick else 3)
    full = not args.quick and names == list(BENCHMARKS)
    output = args.output or (REPO / "BENCHMARKS.md" if full else None)
    command = (
        "make bench"
        if full and argv is None and len(sys.argv) == 1
        else "python -m tests.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ctx-bench-"))
    results: list[Result] = []
    try:
        opts = Options(work=work, runs=runs, quick=args.quick)
        for name in names:
            log(f"--- {name}")
            results.append(BENCHMARKS[name](opts))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(results, command, time.monotonic() - started)
    sys.stdout.write(text)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
