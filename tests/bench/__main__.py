"""``python -m tests.bench [--quick] [--runs N] [NAME ...]``: run the benchmarks, write BENCHMARKS.md.

Names: fetch-150, fetch, fetch-memory, fetch-quiet, upload, watch, scale, big, diode (default:
all). A full run (all benchmarks, not ``--quick``) writes ``BENCHMARKS.md`` at the repository
root; a partial or quick run only prints, unless ``--output`` says where to write.
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

from tests.bench.cases import BENCHMARKS
from tests.bench.harness import REPO, log
from tests.bench.result import Options, Result

NOTES = """\
## Where the time and memory go

Profiles: py-spy (`py-spy record -f raw`, with `--gil` for who holds the interpreter lock) on the
child processes, getrusage of the children, tracemalloc, and `/proc/<pid>/smaps` for memory
outside Python's heap.

- **Fetch.** A pass of 1,000 reports (about 22,000 listing records, 450 requests) against a CTX
  20 ms away is bound by Python's interpreter lock, not by the network: during the listing the
  machine is about two thirds busy (`/proc/stat`), and py-spy `--gil` puts the lock's time in
  four parts: start-up imports (requests, pydantic, prometheus_client), the HTTP client (requests
  and urllib3, about 1 ms of Python per request, a new connection each time since the server
  closes every one), the mirror's per-record work (validation, canonical JSON — the biggest single
  item —, SHA-256, SQLite) and building the 1,000 files. One request at a time waits about 9 s
  for the network; in parallel segments that time nearly vanishes and the lock is what remains.
  At that pace, building the files in worker processes took 0.7 s after the last request instead
  of 0.95 s in threads of one process. At a real API's pace (150 ms per answer, fetch-150) the
  pass waits for its round trips, and none of the CPU-side mechanisms measured there (worker
  processes, rarer WAL checkpoints, one fsync per folder per task, a deep read-ahead, pending
  reports in stored order, the listing cut per worker at the first answer) made it 1.2 times as
  fast: see "Decisions at 150 ms" under fetch-150. What the listing's window waits for is the chain of requests, not the mirror: with every
  record's checks, canonical JSON and digest taken out of the main process (an experiment, not a
  design: the mirror's content was wrong) the last request came no sooner (2.14 s vs 2.14 s, four
  interleaved pairs). 94% of the steps of a segment are two round trips one after the other, the
  page and the end of its cut half (fetcher/ctx/walk.py), so the next lever is the shape of that
  chain, not Python. Measured and kept before: mirror bodies stored as they are (zlib cost as
  much as the rest of a record's work), one JSON encoder for every record's canonical JSON. Measured and dropped: one `INSERT … SELECT FROM json_each` per page instead of a
  row per object, and one `UPDATE` per file for the written marks (both slower: SQLite parses the
  JSON once per column), a shorter or longer interpreter switch interval, a deeper read-ahead,
  splitting segments earlier, a larger SQLite page cache and rarer WAL checkpoints. The half-end
  requests (a full page asked only for its `next`, where one half of a page was cut) are what
  keeps the walk complete (README, CTX API compatibility). The benchmark keeps every run's spool
  until its last run: on this machine's ext4 (no journal) creating files right after deleting
  thousands costs the kernel a scan of the freed inodes (`recently_deleted`, perf), which would
  tax each run for the previous one's clean-up.
- **Fetch memory.** The mirror is on disk; memory holds the pages read ahead, the report files of
  a commit or two in flight and at most 1,000 objects per feed-level file. The fetcher's memory
  is counted over all its processes (itself and any process it starts): the greatest sum of
  their proportional set sizes (PSS, a page shared by several of them counted once) over samples
  every 5 ms, or the fetcher's own `VmHWM` if greater (harness.Child.memory_peak_kib). Sets of ids reach SQLite as one JSON parameter: with
  `IN (?, ?, …)` every count of ids is a prepared statement of its own, and the sqlite3 module's
  cache of 128 of them grows the heap with the feed.
- **Upload.** The uploader makes the same three pycti calls per file as a bare loop
  (`initiate_work`, the push, `to_processed`) plus a look at the connector's queue every 10 s, and
  spends its own CPU on the digest check, the claim, the receipt and the durable moves. Against a
  platform that answers over a network, feeds imported in parallel overlap the platform's time; on
  loopback, where the client's CPU is the only pace, the bare loop is faster (information only).
- **Watch latency.** watchdog's inotify emitter holds every rename for up to 0.5 s to pair it with
  its source; the uploader uses watchdog as published and sees a new file about 0.35 s later.
- **Big bundles.** pycti sends a push as one GraphQL request built in memory: the bundle as text,
  escaped into the request body, so a file pushed whole peaks at about six times its size plus the
  interpreter. `UPLOADER_MAX_PUSH_BYTES` splits big files into pieces under one work and bounds it.
- **Scale.** `status` and the start-up scan walk the spool with `os.scandir` and keep counts, not
  paths; the start-up scan walks one feed folder per loop turn, so the first push does not wait
  for the whole spool to be listed.
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
