"""Diode files written by the real pycti: ``OpenCTIConnectorHelper`` in send-to-directory mode.

Run as a subprocess (the helper installs a process-killing excepthook and starts threads)::

    python -m tests.standins.diode_writer --url URL --token T --out DIR --connector-id ID \
        --name NAME --count N [--objects K] [--seed S]

The helper registers with the OpenCTI at ``--url`` (a stand-in, the "connected side") with
``send_to_directory`` on and ``send_to_queue`` off, and ``send_stix2_bundle`` is called ``--count``
times with a bundle of ``--objects`` indicators each; pycti writes one file per call
(``<name>.json.tmp`` renamed to ``<name>-<YYYYmmdd-HHMMSS>-<epoch>.json``). Prints one line of
JSON per file: ``{"bundle_id", "object_ids"}``, in call order. Exits without ``helper.stop()``
(which would delete the connector upstream).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any


def bundle(seed: str, index: int, objects: int) -> dict[str, Any]:
    stamp = "2026-01-01T00:00:00.000Z"
    items = []
    for k in range(objects):
        ident = f"indicator--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}/{index}/{k}')}"
        items.append(
            {
                "type": "indicator",
                "spec_version": "2.1",
                "id": ident,
                "created": stamp,
                "modified": stamp,
                "name": f"diode {seed} {index} {k}",
                "pattern": f"[ipv4-addr:value = '10.{index % 250}.{k % 250}.1']",
                "pattern_type": "stix",
                "valid_from": stamp,
            }
        )
    return {
        "type": "bundle",
        "id": f"bundle--{uuid.uuid5(uuid.NAMESPACE_URL, f'{seed}/{index}')}",
        "objects": items,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--connector-id", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--seed", default="diode")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between two calls")
    args = parser.parse_args(argv)

    from pycti import OpenCTIConnectorHelper

    config = {
        "opencti": {"url": args.url, "token": args.token, "json_logging": False},
        "connector": {
            "id": args.connector_id,
            "type": "EXTERNAL_IMPORT",
            "name": args.name,
            "scope": "indicator",
            "log_level": "error",
            "queue_protocol": "api",
            "run_and_terminate": True,
            "send_to_queue": False,
            "send_to_directory": True,
            "send_to_directory_path": args.out,
        },
    }
    helper = OpenCTIConnectorHelper(config)
    for index in range(args.count):
        data = bundle(args.seed, index, args.objects)
        helper.send_stix2_bundle(json.dumps(data), update=index % 2 == 1)
        print(
            json.dumps({"bundle_id": data["id"], "object_ids": [o["id"] for o in data["objects"]]}),
            flush=True,
        )
        if args.gap:
            time.sleep(args.gap)
    sys.stdout.flush()
    # No helper.stop(): it unregisters the connector. Threads are daemons or pinging: leave now.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())


def write(
    out: str, url: str, token: str, connector_id: str, name: str, count: int, **options: Any
) -> list[dict[str, Any]]:
    """Run this module in a subprocess (the current interpreter, so the pycti under test) and
    return its lines: one ``{"bundle_id", "object_ids"}`` per file written, in call order."""
    import subprocess

    argv = [sys.executable, "-m", "tests.standins.diode_writer", "--url", url, "--token", token]
    argv += ["--out", out, "--connector-id", connector_id, "--name", name, "--count", str(count)]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=root, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"diode writer failed: {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
