"""The upload baseline: a bare loop over spool files calling pycti directly, no spool bookkeeping.

``python -m tests.bench.bareloop DIR`` with ``OPENCTI_URL``, ``OPENCTI_TOKEN``, ``CONNECTOR_ID`` set:
registers the connector as the uploader does, then for every ``*.json`` under ``DIR`` (in path order)
reads the file and calls ``initiate_work`` → ``send_stix2_bundle`` → ``to_processed``. No digest
check, no claim, no moves, no fsync, no receipt.

``BARE_THREADS=N`` runs the same loop in N threads of the process, the feed folders dealt out among
them (each thread takes its feeds' files in path order): the uploader's shape (one thread per feed
in flight) without its bookkeeping, to tell what threads cost from what the bookkeeping costs.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

from pycti import OpenCTIConnectorHelper


def main() -> int:
    root = Path(sys.argv[1])
    config = {
        "opencti": {
            "url": os.environ["OPENCTI_URL"],
            "token": os.environ["OPENCTI_TOKEN"],
            "ssl_verify": False,
            "json_logging": False,
        },
        "connector": {
            "id": os.environ["CONNECTOR_ID"],
            "type": "EXTERNAL_IMPORT",
            "name": "bench bare loop",
            "scope": "bench",
            "log_level": "warning",
            "queue_protocol": "api",
            "run_and_terminate": False,
            "validate_before_import": False,
            "send_to_queue": True,
            "send_to_directory": False,
        },
    }
    helper = OpenCTIConnectorHelper(config)
    logging.getLogger().setLevel(logging.WARNING)
    paths = sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))

    def push(share: list[Path]) -> None:
        for path in share:
            data = path.read_text(encoding="utf-8")
            work_id = helper.api.work.initiate_work(helper.connect_id, f"bare {path.name}")
            helper.send_stix2_bundle(
                data, work_id=work_id, update=True, cleanup_inconsistent_bundle=False
            )
            helper.api.work.to_processed(work_id, "bare loop")

    threads = int(os.environ.get("BARE_THREADS", "1"))
    if threads <= 1:
        push(paths)
    else:
        feed_of = {path: path.relative_to(root).parts[0] for path in paths}
        turn = {feed: n % threads for n, feed in enumerate(sorted(set(feed_of.values())))}
        shares: list[list[Path]] = [[] for _ in range(threads)]
        for path in paths:
            shares[turn[feed_of[path]]].append(path)
        workers = [threading.Thread(target=push, args=(share,)) for share in shares]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    sys.stdout.write(f"bare loop pushed {len(paths)} files\n")
    sys.stdout.flush()
    # Like the uploader, never helper.stop() (it deletes the connector's works); the ping thread
    # is a daemon.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
