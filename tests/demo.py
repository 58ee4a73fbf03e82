"""`make demo`: the whole pipeline against local stand-ins of CTX and OpenCTI.

Starts both stand-ins on 127.0.0.1 in this process, runs the real ``ctx-fetcher once`` and
``ctx-uploader once`` as separate processes with the same environment variables a user would set,
then prints the spool's status and what reached the OpenCTI stand-in. The spool is left in
``demo-spool/`` for the reader to look at; a second run keeps it, so it shows that nothing is
written twice (``--fresh`` starts from an empty spool).

``--serve`` (``make standins``) starts the same two stand-ins and nothing else, prints the ``export``
lines that point the programs at them, and serves until Ctrl-C or SIGTERM, for trying the commands
by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.standins.ctx import CTXStandIn
from tests.standins.opencti import OpenCTIStandIn

DEMO_TOKEN = "demo-opencti-token-0000"  # the stand-in's own token, not a secret
DEMO_CONNECTOR_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "ctx-opencti-spool-demo"))


@contextmanager
def running_standins(
    spool: Path, *, feeds: int, reports: int, ctx_port: int = 0, opencti_port: int = 0
) -> Iterator[tuple[CTXStandIn, OpenCTIStandIn, dict[str, str]]]:
    """Both stand-ins on 127.0.0.1 with the demo's data, and the settings that point at them.

    The settings are the environment variables a user sets for the real services (README,
    "Configure"); port 0 takes any free port.
    """
    ctx = CTXStandIn(feeds=feeds, reports=reports, orphans=15, seed=7, port=ctx_port)
    with ctx, OpenCTIStandIn(DEMO_TOKEN, port=opencti_port) as opencti:
        yield (
            ctx,
            opencti,
            {
                "CYBERTHREATEXCHANGE_BASE_URL": ctx.base_url,
                "CYBERTHREATEXCHANGE_API_KEY": ctx.api_key,
                "CYBERTHREATEXCHANGE_FEED_IDS": ",".join(ctx.active_feed_ids),
                "OPENCTI_URL": opencti.url,
                "OPENCTI_TOKEN": DEMO_TOKEN,
                "CONNECTOR_ID": DEMO_CONNECTOR_ID,
                "SPOOL_DIR": str(spool),
            },
        )


def serve(spool: Path, *, feeds: int, reports: int, ctx_port: int, opencti_port: int) -> int:
    """Run both stand-ins until Ctrl-C or SIGTERM, after printing the settings as export lines."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with running_standins(
        spool.resolve(), feeds=feeds, reports=reports, ctx_port=ctx_port, opencti_port=opencti_port
    ) as (ctx, opencti, settings):
        print(
            f"# CTX stand-in:     {ctx.base_url}  ({len(ctx.active_feed_ids)} feeds, the demo's data)\n"
            f"# OpenCTI stand-in: {opencti.url}\n"
            "# Both run until Ctrl-C. In another shell, from this folder: `. .venv/bin/activate`,\n"
            "# paste the lines below, then run ctx-fetcher and ctx-uploader (README, Run)."
        )
        for name, value in settings.items():
            print(f"export {name}={shlex.quote(value)}")
        sys.stdout.flush()
        try:
            while not stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        print(
            f"\nStopped. The OpenCTI stand-in received {len(opencti.pushes)} pushes in "
            f"{len(opencti.works)} works.",
            flush=True,
        )
    return 0


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _run(title: str, argv: list[str], env: dict[str, str]) -> int:
    print(f"\n$ {' '.join(argv)}    # {title}", flush=True)
    started = time.monotonic()
    rc = subprocess.run(argv, env=env, check=False).returncode
    print(f"  → exit {rc} in {time.monotonic() - started:.1f}s", flush=True)
    return rc


def _not_imported(spool: Path) -> Counter[str]:
    """Objects in the spool's ``done/`` files of types pycti leaves out of a push.

    The uploader pushes what ``pycti.utils.opencti_stix2_splitter.is_id_supported`` accepts (as
    pycti's own splitter does); the rest (``extension-definition``, unknown custom types) travels
    in the files only.
    """
    from pycti.utils.opencti_stix2_splitter import is_id_supported

    counts: Counter[str] = Counter()
    for path in (spool / "done").rglob("*.json"):
        for obj in json.loads(path.read_bytes()).get("objects", []):
            if isinstance(obj.get("id"), str) and not is_id_supported(obj["id"]):
                counts[str(obj.get("type"))] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spool", type=Path, help="the spool (default: demo-spool, or spool with --serve)"
    )
    parser.add_argument("--feeds", type=int, default=3)
    parser.add_argument("--reports", type=int, default=24)
    parser.add_argument("--fresh", action="store_true", help="delete the demo spool first")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="only start the stand-ins, print the settings as export lines, serve until Ctrl-C",
    )
    parser.add_argument("--ctx-port", type=int, default=0, help="with --serve (0: any free port)")
    parser.add_argument(
        "--opencti-port", type=int, default=0, help="with --serve (0: any free port)"
    )
    args = parser.parse_args(argv)

    if args.serve:
        return serve(
            args.spool or Path("spool"),
            feeds=args.feeds,
            reports=args.reports,
            ctx_port=args.ctx_port,
            opencti_port=args.opencti_port,
        )
    spool: Path = args.spool or Path("demo-spool")
    if args.fresh and spool.exists():
        shutil.rmtree(spool)
    again = spool.exists()
    print(
        "Demo: both services below are LOCAL STAND-INS on 127.0.0.1, started by this script:\n"
        "  - a CTX API stand-in serving generated feeds (no account, no network), and\n"
        "  - an OpenCTI GraphQL stand-in that checks and records what the uploader pushes.\n"
        "The programs and settings are the real ones; point them at the real services with\n"
        "CYBERTHREATEXCHANGE_BASE_URL/_API_KEY/_FEED_IDS and OPENCTI_URL/_TOKEN, CONNECTOR_ID\n"
        "(README, Configure; `make standins` starts these two stand-ins alone)."
    )
    with running_standins(spool, feeds=args.feeds, reports=args.reports) as (
        ctx,
        opencti,
        settings,
    ):
        env = {
            **os.environ,
            **settings,
            "CONNECTOR_NAME": "Cyber Threat Exchange (demo)",
            "CONNECTOR_LOG_LEVEL": "warn",
        }
        print(f"\nCTX stand-in:     {ctx.base_url}  ({len(ctx.active_feed_ids)} feeds)")
        print(f"OpenCTI stand-in: {opencti.url}")
        rc = _run("see which feeds the team is subscribed to", [_bin("ctx-fetcher"), "feeds"], env)
        rc |= _run("one pass over every configured feed", [_bin("ctx-fetcher"), "once"], env)
        rc |= _run("import everything in incoming/", [_bin("ctx-uploader"), "once"], env)
        rc |= _run("where every file is now", [_bin("ctx-uploader"), "status"], env)
        rc |= _run("check every file against its name", [_bin("ctx-uploader"), "verify"], env)

        counts = Counter(obj.get("type", "?") for obj in opencti.objects())
        print(f"\nReached the OpenCTI stand-in: {len(opencti.pushes)} pushes in ", end="")
        print(f"{len(opencti.works)} works, {sum(counts.values())} objects ", end="")
        print(f"({len(opencti.object_ids())} distinct ids; shared ones travel in every bundle):")
        width = max((len(t) for t in counts), default=4)
        for kind, n in sorted(counts.items()):
            print(f"  {kind:<{width}}  {n:>5}")
        left_out = _not_imported(spool)
        if left_out:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(left_out.items()))
            print(
                f"Carried in the spool's files but not pushed (pycti does not import them): {kinds}"
            )
    print(
        f"\nThe spool is in {spool}/ (incoming/ is empty, done/ holds each file and its receipt)."
    )
    if again:
        print(
            f"This run kept the spool of the last one: the fetcher's state ({spool}/.fetcher/) "
            "knew every report, so nothing was written twice and nothing new was imported.\n"
            "`make demo ARGS=--fresh` starts from an empty spool."
        )
    else:
        print(
            "Run `make demo` again: it keeps this spool, and the fetcher writes nothing twice "
            f"(its state is in {spool}/.fetcher/)."
        )
    return rc


if __name__ == "__main__":
    sys.exit(main())
