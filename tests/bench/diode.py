"""The diode benchmark: 10,000 small diode files written by the real pycti, copied into the drop
folder of a running ``ctx-uploader watch``, adopted and imported into the OpenCTI stand-in."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.bench.harness import TOKEN, Child, Series, TimedOpenCTI, log, rss_mib, tool, uploader_env
from tests.bench.result import Options, Result, Row
from tests.standins import diode_writer
from tests.standins.opencti import OpenCTIStandIn

DIODE_FILES = 10_000
DIODE_CONNECTORS = 4
#: Added to every answer of the stand-in, as in the upload benchmark: a platform on a network.
DIODE_LATENCY = 0.020
#: diode-import's hard-coded poll (``time.sleep(60)`` in ``DiodeImport.run``).
DIODE_IMPORT_POLL = 60.0


def bench_diode(opts: Options) -> Result:
    files = 1000 if opts.quick else DIODE_FILES
    written = opts.work / f"diode-written-{uuid.uuid4().hex[:8]}"
    per = files // DIODE_CONNECTORS
    started = time.monotonic()
    with OpenCTIStandIn(TOKEN) as upstream, ThreadPoolExecutor(DIODE_CONNECTORS) as pool:
        jobs = []
        for i in range(DIODE_CONNECTORS):
            out = written / f"c{i}"
            out.mkdir(parents=True)
            connector = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-diode-{i}"))
            jobs.append(
                pool.submit(
                    diode_writer.write,
                    str(out),
                    upstream.url,
                    TOKEN,
                    connector,
                    f"Bench Diode {i}",
                    per,
                    objects=1,
                    seed=f"{connector}-{uuid.uuid4().hex[:6]}",
                )
            )
        for job in jobs:
            job.result()
    sources = sorted(p for p in written.rglob("*.json"))
    log(f"diode: {len(sources)} files written by pycti in {time.monotonic() - started:.1f} s")

    spool = opts.work / f"diode-spool-{uuid.uuid4().hex[:8]}"
    drop = opts.work / f"diode-drop-{uuid.uuid4().hex[:8]}"
    drop.mkdir()
    with TimedOpenCTI(TOKEN, keep_bundles=False) as standin:
        standin.slow(DIODE_LATENCY, times=10**9)
        env = uploader_env(
            spool,
            standin,
            CONNECTOR_LOG_LEVEL="info",
            UPLOADER_DROP_DIR=str(drop),
            UPLOADER_CONCURRENCY=str(DIODE_CONNECTORS),
        )
        child = Child([tool("ctx-uploader"), "watch"], env, opts.work / "diode.log")
        try:
            if not child.wait_for_text("watching", 60):
                raise RuntimeError(f"watch did not start:\n{child.tail()}")
            copy_start = time.monotonic()
            subprocess.run(["cp", *map(str, sources), str(drop)], check=True)
            copy_end = time.monotonic()
            deadline = copy_end + 1800
            while len(standin.push_times) < len(sources):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(standin.push_times)} pushes:\n{child.tail()}")
                time.sleep(0.2)
            pushes = sorted(t for t, _ in standin.push_times)
        finally:
            child.signal(signal.SIGTERM)
            child.wait(120)
    shutil.rmtree(spool)
    shutil.rmtree(drop)
    shutil.rmtree(written)

    total = pushes[-1] - copy_start
    rate = len(sources) / total
    first = pushes[0] - copy_start
    waits = Series([t - copy_end for t in pushes])
    peak = rss_mib(child.peak_rss_kib)
    log(f"diode: {rate:.0f} files/s, copy → last push {total:.1f} s, peak RSS {peak:.0f} MiB")
    result = Result("diode")
    result.rows.append(
        Row(
            "Diode files: copy → first push (diode-import: its 60 s poll first)",
            f"< {DIODE_IMPORT_POLL:.0f} s",
            f"{first:.1f} s",
            first < DIODE_IMPORT_POLL,
        )
    )
    result.rows.append(
        Row(
            f"Diode files: {len(sources):,} adopted and imported, 20 ms per platform answer "
            "(copy start → last push)",
            "(figure only)",
            f"{total:.0f} s, {rate:.0f} files/s",
            None,
        )
    )
    result.rows.append(
        Row(
            "Diode files: peak RSS of ctx-uploader watch",
            "(figure only)",
            f"{peak:.0f} MiB",
            None,
        )
    )
    result.details += [
        f"{len(sources):,} diode files of one indicator each, written by the installed pycti's "
        f"`OpenCTIConnectorHelper.send_stix2_bundle` (send_to_directory, {DIODE_CONNECTORS} "
        "connectors), copied with one `cp` into the drop folder of a running `ctx-uploader watch` "
        f"(UPLOADER_CONCURRENCY={DIODE_CONNECTORS}); the OpenCTI stand-in adds "
        f"{DIODE_LATENCY * 1000:.0f} ms to every answer. Each file is adopted (read, parsed, "
        "published into the spool with its .source, recorded in the ledger, removed), then "
        "imported as its connector: one workAdd, one push, one toProcessed.",
        f"- copy took {copy_end - copy_start:.1f} s; push time after the copy ended: "
        f"{waits.fmt('s', 1)}",
        f"- anchor: diode-import looks at its folder every {DIODE_IMPORT_POLL:.0f} s "
        "(a file copied just after a look waits up to that long before anything happens), then "
        "imports one file at a time.",
    ]
    return result
