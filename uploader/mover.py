"""The mover: a helper process that moves imported files to ``done/`` with their receipts.

Why a process (issue 6): the move is file-system work in the kernel (a new inode for the receipt,
two fsyncs, a link and an unlink: about as much CPU as the three platform calls on the machine it
was measured on). In the importing process every one of those system calls hands the interpreter
lock to another thread and waits to get it back; measured with ``make bench`` the uploader then
spent more time passing the lock around than importing. In a process of its own the same work runs
beside the imports, on another core, and the importing threads only write one line to a pipe.

The move itself is :func:`uploader.outcome.mark_done`, as in the importing process: same order of
steps, same durability, same crash rules. The pipeline keeps everything else (what to import,
failures, counts, logging); the mover only answers, per file, ``done``, ``conflict`` (``done/``
holds different bytes: the pipeline fails the file) or ``error`` (disk full, EIO: the pipeline
retries the move itself, never the import). If the mover cannot start or dies, the pipeline moves
files itself, as it did before: nothing depends on the mover but speed.

Protocol: one JSON document per line each way, over the mover's stdin and stdout. The mover reads
until end of input (the pipeline closes it at stop) and stops early if its parent dies (a file it
would move then is reclaimed into ``incoming/`` by the next run, like any claimed file). It never
sees a secret: it starts with an environment without the tokens and keys, and its requests carry
paths and the receipt only. Run as ``python -m uploader.mover SPOOL_DIR INSTANCE``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from shared.errors import DestinationExistsError
from shared.layout import Spool
from uploader.importer import ImportReceipt
from uploader.outcome import mark_done

logger = logging.getLogger(__name__)

#: Environment variables never passed to the mover (it needs none of them).
_SECRET_NAME = re.compile(
    r"(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)|^(OPENCTI|CYBERTHREATEXCHANGE)_"
)
#: Seconds the pipeline waits for the mover to exit after closing its input, before killing it.
STOP_TIMEOUT = 10.0

AnswerKind = Literal["done", "conflict", "error", "lost"]


@dataclass(frozen=True)
class MoveJob:
    """One imported file to move: what :func:`mark_done` needs."""

    claimed: Path
    rel: PurePosixPath
    receipt: ImportReceipt
    sha256: str
    attempts: int


def mover_env(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """The environment of the mover: the caller's, minus anything that looks like a secret."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items() if not _SECRET_NAME.search(name)}


class Mover:
    """The pipeline's side: starts the mover, sends it jobs, hands each answer to ``on_answer``.

    ``on_answer(job, kind, message)`` is called from a reader thread with the job sent (the
    caller's own :class:`MoveJob`, or a subclass of it), once per job, in the order they were sent: ``kind`` is ``done``, ``conflict``, ``error`` or ``lost`` (the mover
    died before answering: the caller must finish the file itself). After a ``lost`` answer the
    mover is gone: :meth:`send` returns False and the caller moves files itself.
    """

    def __init__(
        self,
        spool_root: Path,
        instance: str,
        on_answer: Callable[[MoveJob, AnswerKind, str], None],
    ) -> None:
        self._on_answer = on_answer
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._pending: dict[int, MoveJob] = {}
        self._next_id = 0
        self._alive = True
        if not sys.executable:
            raise OSError("no Python interpreter to start the mover with (sys.executable)")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "uploader.mover", str(spool_root), instance],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=mover_env(),
            close_fds=True,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._stdin: IO[bytes] = self._proc.stdin
        self._reader = threading.Thread(
            target=self._read, args=(self._proc.stdout,), name="uploader-mover", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, job: MoveJob) -> bool:
        """Queue ``job``; False if the mover is gone (the caller moves the file itself)."""
        with self._lock:
            if not self._alive:
                return False
            job_id = self._next_id
            self._next_id += 1
            self._pending[job_id] = job
        try:
            # Its own lock, so the reader never waits behind a write to a full pipe: whole lines,
            # never interleaved.
            with self._write_lock:
                self._stdin.write(job_line(job_id, job))
                self._stdin.flush()
        except (OSError, ValueError):
            with self._lock:
                self._alive = False
                # If the reader saw the mover end first, it answered "lost" for this job already.
                mine = self._pending.pop(job_id, None) is not None
            logger.error("the mover process is gone; files are moved by the uploader itself")
            return not mine
        return True

    def close(self) -> None:
        """End the mover's input, wait for it to answer what it has, and for it to exit."""
        with self._lock:
            self._alive = False
        with self._write_lock, contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        try:
            self._proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.error("the mover process did not exit; killing it")
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=STOP_TIMEOUT)
        if not self._reader.is_alive():
            assert self._proc.stdout is not None
            self._proc.stdout.close()

    def _read(self, stdout: IO[bytes]) -> None:
        for raw in stdout:
            try:
                job_id, kind, message = _parse_answer(raw)
            except ValueError:
                logger.error("unreadable answer from the mover process: %r", raw[:200])
                continue
            with self._lock:
                job = self._pending.pop(job_id, None)
            if job is not None:
                self._answer(job, kind, message)
        # End of output: the mover exited (closed by us, or died). Whatever it did not answer is
        # the caller's to finish.
        with self._lock:
            self._alive = False
            lost = list(self._pending.values())
            self._pending.clear()
        if lost:
            logger.error(
                "the mover process ended with %d file(s) not confirmed (exit status %s); the "
                "uploader moves them itself",
                len(lost),
                self._proc.poll(),
            )
        for job in lost:
            self._answer(job, "lost", "the mover process ended")

    def _answer(self, job: MoveJob, kind: AnswerKind, message: str) -> None:
        try:
            self._on_answer(job, kind, message)
        except Exception:  # the reader must keep reading: every job needs its answer
            logger.exception("handling the mover's answer failed")


#: The receipt's fields, named once (``dataclasses.asdict`` copies deeply: a few per cent of the
#: uploader's CPU per small file, issue 6).
_RECEIPT_FIELDS = tuple(f.name for f in fields(ImportReceipt))


def job_line(job_id: int, job: MoveJob) -> bytes:
    """One request to the mover: ``<id> <JSON of the job>`` and a newline (read by :func:`serve`)."""
    body = {
        "claimed": str(job.claimed),
        "rel": str(job.rel),
        "receipt": {name: getattr(job.receipt, name) for name in _RECEIPT_FIELDS},
        "sha256": job.sha256,
        "attempts": job.attempts,
    }
    return f"{job_id} ".encode() + json.dumps(body, separators=(",", ":")).encode("utf-8") + b"\n"


def _parse_answer(raw: bytes) -> tuple[int, AnswerKind, str]:
    """(job id, kind, message) of one answer line; ValueError if it is not one."""
    try:
        document = json.loads(raw)
        job_id, kind = int(document["id"]), document["kind"]
    except (KeyError, TypeError) as exc:
        raise ValueError(raw) from exc
    if kind not in ("done", "conflict", "error"):
        raise ValueError(kind)
    return job_id, kind, str(document.get("message", ""))


def serve(spool: Spool, instance: str, source: IO[bytes], sink: IO[bytes]) -> int:
    """The mover's loop: one job per line of ``source``, one answer per line on ``sink``."""
    parent = os.getppid()
    served = 0
    for raw in source:
        if os.getppid() != parent:
            # The uploader died: its claimed files are reclaimed by the next run.
            break
        job_id, _, body = raw.partition(b" ")
        answer: dict[str, Any] = {"id": int(job_id)}
        try:
            job = json.loads(body)
            mark_done(
                spool,
                Path(job["claimed"]),
                PurePosixPath(job["rel"]),
                ImportReceipt(**job["receipt"]),
                instance=instance,
                sha256=job["sha256"],
                attempts=int(job["attempts"]),
            )
            answer["kind"] = "done"
        except DestinationExistsError as exc:
            answer.update(kind="conflict", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - disk full, EIO: the pipeline retries the move
            answer.update(kind="error", message=f"{type(exc).__name__}: {exc}")
        sink.write(json.dumps(answer).encode("utf-8") + b"\n")
        sink.flush()
        served += 1
    return served


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m uploader.mover SPOOL_DIR INSTANCE\n")
        return 2
    # The uploader decides when the mover stops (end of its input): a Ctrl-C that reaches the
    # whole process group must not kill it while the uploader finishes its current files.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(Spool(Path(args[0])), args[1], sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
