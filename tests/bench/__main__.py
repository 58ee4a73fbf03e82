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
    return "\n".join(lines) + "\n"


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
