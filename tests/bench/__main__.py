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

from tests.bench.cases import BENCHMARKS
from tests.bench.harness import REPO, log
from tests.bench.result import Options, Result

NOTES = """\
## Findings and fixes

Profiles: py-spy (`py-spy record -f raw --threads`, with `--gil` for who holds the interpreter
lock) on the child processes, getrusage (CPU and context switches) of the children, tracemalloc,
and timing wrappers around the suspects. Each fix below was measured side by side with the code
before it in one session; commit messages give the figures.

### 2026-11-30, fourth session: the per-file calls without requests' session machinery

Measured (timing wrappers around `Pipeline._process` and `Session.send` in the uploader, thread
CPU with `time.thread_time`, 1,000 files; a loop of 1,500 `workAdd` calls per method against the
stand-in in another process):

- With two feeds in flight, both importing threads were busy all the time (1.99 imports running
  on average): the scheduler's hand-offs were not the limit. Each file cost its importing thread
  2.2-3.0 ms of CPU, the three HTTP calls about 1.4 ms of it. The uploader process was CPU-bound
  in one interpreter; lowering `sys.setswitchinterval` made it slower.
- Client CPU per call, ms: pycti `api.query` 0.46 (0.59 before the environment was resolved
  once), `Session.post` 0.45, a prepared request copied and sent 0.37, urllib3's pool directly
  0.29, `http.client` 0.20. Most of requests' share is per-call session machinery (merging
  settings and headers, preparing the request, hooks, cookies, building a `Response`).

Changed:

- The three calls made for every file (`workAdd`, `stixBundlePush`, `workEdit.toProcessed`) go
  through `uploader.opencti.GraphQLTransport`: the same GraphQL documents and headers, on the
  urllib3 pool pycti's session adapter picks for the API URL (its TLS verification, CA bundle,
  proxy and kept-alive connections), errors raised as `api.query` and `Session.post` raise them.
  0.27 ms per call; per file the importing thread's CPU went from 2.2-3.0 ms to 1.4-1.6 ms.
  Registration, pings, marking a work in error and polling a work stay with pycti. Tests now
  serve the stand-in over HTTPS (self-signed certificate: trusted through REQUESTS_CA_BUNDLE,
  refused without it) and through a forward proxy stand-in.
- The connection pool is kept between calls (requests looks it up on every call: 5% of the
  uploader's interpreter-lock time) and taken again if it was closed; the mover's job line names
  the receipt's fields instead of `dataclasses.asdict` (1.5%).
- Upload, three alternating pairs before the full run: ours/bare 1.13, 1.21 and 1.26x, where the
  same day's runs had given 0.85-1.0x. Medians of this session's runs after the change: 1.57x
  (make bench), 1.63x (`--quick`), 1.24x (`python -m tests.bench upload`; one pair of five at
  0.98x), 1.38x (make bench, after the dispatch change below; the table above).
- The scheduler built the list of ready feeds on every turn of its loop, also when every import
  slot was busy (most turns: a move answered, a path seen): it now returns at once then (the
  main loop was about 16% of the uploader's interpreter-lock time in the import window).

Not done: `http.client` directly would save another 0.08 ms per call but drop urllib3's
pool, proxy and TLS handling; sending the push and `toProcessed` as one GraphQL document (two
mutation fields, run in order) would save a round trip per file but changes what the platform
sees and could not be checked against a real OpenCTI here.

### 2026-11-30, third session: where the upload time goes now; split pushes

Measured (getrusage of each process of the uploader, strace -f per thread, py-spy --gil, 1,000
files, alternating with the bare loop):

- CPU per run: bare loop 2.6-3.5 s in its one process; ours 3.1-3.9 s in the uploader process
  plus 0.9-1.7 s in the mover (nearly all kernel time: two fsyncs and a new file per move); the
  stand-in 0.8-1.2 s in both cases. Cores are not saturated: the uploader process is the pace,
  about one core with Python's interpreter lock held by one thread at a time.
- System calls per file in the uploader process: 166 (86 of them futex) against 59 for the bare
  loop. The futex calls are the interpreter lock passed between the two importing threads at
  each socket call (each thread about 18 per file); that is what running two imports at once
  costs in one interpreter, and what buys overlapping the platform's time.
- 16 KiB mmap/munmap pairs in the main thread (CPython 3.11 allocating and freeing frame-stack
  chunks) looked like 8 per file; they are a fixed ~8,000 at start-up (300 files: 35 per file),
  not per file.
- So the comparison is at parity on this machine: `python -m tests.bench upload` gave 1.00x
  (min 0.81, max 1.14, n=5) after the changes below; the full run's figure is in the table.
- The ceiling for threads: the bare loop itself run in 2 or 4 threads of one process (the feeds
  dealt out, no bookkeeping at all) imported 0.99-1.10 times as fast as in one thread over four
  alternating rounds, and ours matched the two-thread loop (215/253/270/264 vs 187/251/316/277
  files/s). Our bookkeeping is not what is left; the interpreter lock is. The upload table now
  has that row (`BARE_THREADS=2`, tests/bench/bareloop.py) in every run.

Changed:

- The pipeline's event queue is a `queue.SimpleQueue` (no Python-level condition and lock per
  put and get); a spool file of known size is read with one read (the second read into a 1 MiB
  buffer only to see the end is gone).
- A bundle over UPLOADER_MAX_PUSH_BYTES was parsed whole, every object re-serialised and every
  chunk held until the last push (tracemalloc: 2.2 times the file on top of it). It is now cut
  from where each object is in the file (`uploader.check.bundle_layout`: the streaming reader run
  over Latin-1 text, one character per byte, so positions are file offsets) and each chunk is
  built from the file's own bytes when it is pushed: 0.27 times the file (tests pin it under a
  third). The big bundle pushed in 8 MiB pieces: 6.2x to 4.0x of the file (243 to 157 MiB).
- `pushed_size_of` picked out control characters with one `bytes.translate` over the whole file,
  which allocates a copy of its input first; it now goes a megabyte at a time.

Measurement:

- One big-bundle run in a few reported 43 MiB more for the uploader (186 instead of 143 MiB, in
  the code before this session's changes too): the harness counted a short-lived child of the
  uploader (the `ldconfig -p` that `ctypes.util.find_library` runs while pycti is imported) read
  between its fork and its exec, when it still reports its parent's memory. Helpers are now read
  only once their command line is their own (`harness.Child.sample_helpers`).

Tried and not kept:

- Group commit in the mover (read every job waiting on the pipe, write all their receipts, fsync
  them together, one fsync per done/ folder): the mover keeps up with files one at a time (of
  1,000 files, 959 batches held one file), so there is nothing to group without holding answers
  back; within noise, and the mover is not the pace anyway.
- Caching the list of other uploaders' claim folders (one listing per file): about 1% of the
  per-file CPU, against a stale list when a second uploader starts on the same spool.

### 2026-11-30, second session: the mover process

Measured first (strace -c, getrusage, py-spy --gil, timing wrappers, on the upload set-up):

- Creating a file costs this machine's ext4 0.2 to 0.8 ms of kernel CPU (an inode allocation; 10
  us on tmpfs); a rename, link or unlink costs 10-20 us. The move to done/ creates one file (the
  receipt) and fsyncs twice: 0.6 to 0.9 ms of CPU per file, as much as a third of the three
  platform calls. Nothing in the bare loop creates a file.
- In the importing process every one of those system calls releases Python's interpreter lock,
  and another thread takes it: about 230 futex calls and 55 voluntary context switches per file
  (the bare loop: 26 futex calls in all, 3 switches per file). The sys time of the uploader was
  five times the bare loop's.
- The three platform calls themselves cost less than the bare loop's (pycti's splitter is not
  run; 1.5 vs 2.1-2.4 ms of CPU per file in one process, alternating), and the rest of the
  per-file work (read, digest, claim, checks) is about 0.4 ms.

Changed:

- The moves run in a helper process, the mover (`uploader/mover.py`): the importing threads write
  one line per file to a pipe; the mover runs the same `mark_done` and answers done, conflict or
  error; the pipeline keeps the counts, the logging and the failures, and moves files itself if
  the mover cannot start or dies (tests kill it mid-run: nothing lost, nothing imported twice). The
  upload table's UPLOADER_MOVE_PROCESS=false row is the same code with the moves in the importing
  process, measured in the same runs. Voluntary context switches per file: about 55 to 27.
- An earlier attempt at the same idea (first session of the day, below) measured "within noise":
  that prototype kept its threads and queues around the pipe; the mover replaces the in-process
  move outright.
- The bench counts the mover's peak RSS (about 20 MiB) in the uploader's (harness.Child follows
  the child's own children), and runs five upload pairs instead of three.

Tried and not kept: moving `to_processed` off the feed's path (the next file starting right after
the push) and sys.setswitchinterval from 0.2 to 20 ms: within noise.

What is left: the uploader process is now the three HTTP requests through requests/pycti (py-spy:
73% of the time it holds the lock is in `Session.post`, 17% of it parsing response headers with
`email.parser`), the same calls the bare loop makes. The two cores are shared by it, the mover and
the stand-in, so ours can only win by overlapping the stand-in's time with its own.

### 2026-11-30, first session

Measurement:

- Peak RSS was read from `wait4`'s `ru_maxrss`, which Linux carries from the parent into a child
  across `vfork`/`exec`: every child "peaked" at least at the bench process's own high-water mark
  (a child running `pass` from a 500 MiB parent reports 513 MiB). Peaks are now each child's own
  `VmHWM`, read every 5 ms until it exits. Re-measured with the corrected harness, the code before
  this session's changes still gave 5.2x (fetcher) and 6.2x (uploader) for the big bundle: those
  figures were real.

Fetch (2.84x to about 5x of CONCURRENCY=1):

- The objects listing, a chain of 79 round trips, is now walked in segments of time at once
  (`fetcher/segments.py`): `added_after=T` can start a walk anywhere, each segment stops where the
  next begins, so nothing is skipped or yielded twice, and segments are handed on in time order
  (same batches and cursors as one walk). The cut points are the reports listing's cursors, read
  ahead anyway: CTX adds a report with the objects it refers to. The chain became about six
  segments of 15-17 requests.
- With the listing parallel, the main thread's writes were the bottleneck: each report file was
  written, fsynced and its folder fsynced in turn (3.5 ms per file). Files are now built and
  staged (written and fsynced under a hidden name) in the pool threads, and only renamed into
  place, in listing order, by the main thread; the next page's bundles are asked for before the
  current page's files are renamed.
- The CTX stand-in sorted the whole feed under its lock on every listing request (1.1 ms): with 17
  requests in flight it, not the fetcher, set the pace. It now picks only the page it answers.
- The rate limiter spaced requests exactly 1/rate apart; with requests always waiting (listings in
  parallel) the server saw 101 in one second with a limit of 100. Requests are now 2% further apart
  (98/s with a limit of 100).

Upload (0.55-0.65x to about 0.8x of the bare loop; still a miss):

- pycti's requests session read the proxy and CA variables (and ~/.netrc) from the environment on
  every request: a quarter of the uploader's CPU per file (500 imports in one thread: 2.57 to
  1.87 ms of CPU per file). Resolved once when the connector registers.
- A feed's next file now starts as soon as OpenCTI accepted the previous one; the move to done/
  runs meanwhile (and is retried in place, never by importing again, if it fails). At
  UPLOADER_CONCURRENCY=1 this alone took 118 to 236 files/s.
- Two fsyncs per done file instead of four: the receipt's folder and the bundle's link share one
  folder fsync, and the claim folder is not fsynced (reclaim drops a claimed copy whose bytes are
  already in done/). Fewer system calls per file: one read of the known size, no mkdir per claim,
  one folder listing for other uploaders' claims, receipts without json's pure-Python indenting.

Big bundle (fetcher 5.2x to 2.9x, uploader 6.2x to 3.2x of a 39 MiB file):

- Fetcher: each page of the bundle answer is reduced to each object's canonical bytes as it
  arrives (`fetcher.bundle.BundleBuilder`, which also gives the ledger's per-object SHA-256 without a
  second serialisation); the file is staged from those pieces without joining them.
- Uploader: files of 1 MiB or more are checked one object at a time over slices of text
  (`uploader.check.scan_bundle`, which hands anything unusual to the full parser so refusals are
  unchanged); in the `api` protocol the push body is written from the file's bytes as it is sent
  (`uploader.opencti.PushBody`: the same mutation on pycti's session), instead of pycti building
  the text, the escaped text and the encoded body of a 40 MB file at once.

Tried and not kept:

- A separate process for the done/ bookkeeping, so its system calls would not hand the
  interpreter lock back and forth with the importing threads: within noise (0.82x vs 0.78x of the
  bare loop over four alternating rounds). Re-done in the second session as the mover (above).
- Imports in worker processes, one per feed in flight: 1.04x median over four rounds (threads:
  0.78x), because two processes use both cores. Not adopted: every worker is another interpreter
  with pycti loaded (about 75 MiB), which counted honestly breaks the big-bundle memory target, and
  each adds pycti's start-up and a registration; against a platform that takes milliseconds to
  answer, threads already overlap the waits (the figure-only row above).

Missed then, and why (the second session's mover changed the first point):

- Upload 1.0x (and the stretch 2x): on these two cores the comparison is CPU-bound, with the
  OpenCTI stand-in on the same machine answering in about a millisecond. The bare loop is one
  thread that never waits for the interpreter lock; the uploader has importing threads and the
  durable move to done/ running beside them, and each of the move's system calls hands the lock to
  an importing thread and back (getrusage: about 60 voluntary context switches per file, against 3
  for the bare loop). With the move removed (an experiment, not a product) the same pipeline ran
  at 1.05-1.17x of the bare loop; with 5 ms per platform answer it runs at about 1.9x (row above).
  No fsync was dropped to get closer.
- Big bundle pushed in 8 MiB pieces (figure only): splitting still parses the whole bundle.

### 2026-11-28 (first full run)

Fixed then:


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
