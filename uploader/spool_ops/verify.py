"""``verify``: every spool file's bytes against the SHA-256 (and signature) in its name, or the
files a ``ctx-fetcher transfer`` manifest lists, wherever they are now (read-only)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.errors import UnsafeNameError
from shared.layout import (
    DONE,
    FAILED,
    INCOMING,
    PATH_RULE,
    PROCESSING,
    STATES,
    Spool,
    SpoolName,
    walk_bundles,
)
from shared.layout import parse_relative_path as parse_rel
from shared.signing import SigningKey
from uploader.spool_ops.claim import claim_folders


@dataclass(frozen=True)
class _Found:
    state: str
    path: Path
    rel: PurePosixPath  # relative to the state folder (for processing/: below the instance)
    instance: str | None
    is_symlink: bool

    @property
    def feed(self) -> str:
        return self.rel.parts[0] if len(self.rel.parts) > 1 else "-"

    @property
    def display(self) -> str:
        middle = f"{self.instance}/" if self.instance else ""
        return f"{self.state}/{middle}{self.rel}"


def _walk(spool: Spool) -> Iterator[_Found]:
    for state in STATES:
        root = spool.state_dir(state)
        if state == PROCESSING:
            for entry in walk_bundles(root):
                instance, *rest = entry.relative.parts
                if not rest:
                    continue
                yield _Found(state, entry.path, PurePosixPath(*rest), instance, entry.is_symlink)
        else:
            for entry in walk_bundles(root):
                yield _Found(state, entry.path, entry.relative, None, entry.is_symlink)


@dataclass(frozen=True)
class BadFile:
    """A spool file whose bytes do not match its name (or that cannot be checked)."""

    path: str
    problem: str


def _digests(path: Path, key: SigningKey | None) -> tuple[str, str | None]:
    """SHA-256 of a file's bytes and, with a key, their signature: one read, no symlink followed."""
    digest = hashlib.sha256()
    mac = None if key is None else key.new_mac()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            if mac is not None:
                mac.update(chunk)
    return digest.hexdigest(), None if mac is None else mac.hexdigest()


def _check_file(
    path: Path, name: SpoolName, key: SigningKey | None, expected_sha256: str | None = None
) -> str | None:
    """What is wrong with one file (None: nothing); FileNotFoundError if it went away.

    The signature is checked only once the bytes match the SHA-256, as the uploader does.
    """
    try:
        actual, mac = _digests(path, key)
    except FileNotFoundError:
        raise
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if expected_sha256 is not None and actual != expected_sha256:
        return f"SHA-256 is {actual}, manifest says {expected_sha256}"
    if actual != name.sha256:
        return f"SHA-256 is {actual}, name says {name.sha256}"
    if key is None:
        return None
    if name.signature is None:
        return "unsigned: the name carries no signature and a signing key is set"
    if mac is None or not key.verify_mac_hex(mac, name.signature):
        return "bad-signature: the signature in the name is not the HMAC of the bytes under our key"
    return None


def verify(spool: Spool, key: SigningKey | None = None) -> tuple[int, list[BadFile]]:
    """Check every ``.json`` in every state against the SHA-256 in its name (and, with a signing
    key, against the signature in its name: unsigned and wrongly signed files are bad).

    Returns how many files were checked and the bad ones.
    """
    checked = 0
    bad = []
    for item in _walk(spool):
        checked += 1
        if item.is_symlink:
            bad.append(BadFile(item.display, "symbolic link"))
            continue
        try:
            _feed, name = parse_rel(item.rel)
        except UnsafeNameError:
            bad.append(BadFile(item.display, f"not a spool file name: {PATH_RULE}"))
            continue
        try:
            problem = _check_file(item.path, name, key)
        except FileNotFoundError:
            checked -= 1
            continue
        if problem is not None:
            bad.append(BadFile(item.display, problem))
    return checked, bad


# sha256sum's output: "<hex>  <path>" (text mode) or "<hex> *<path>" (binary mode).
_MANIFEST_LINE = re.compile(r"^(?P<sha256>[0-9a-fA-F]{64}) [ *](?P<path>.+)$")


def _locate(spool: Spool, rel: PurePosixPath) -> tuple[str, Path] | None:
    """Where ``rel`` is now: incoming/, any processing/<instance>/, done/ or failed/."""
    candidates = [(f"{INCOMING}/{rel}", spool.path_in(INCOMING, rel))]
    try:
        instances = claim_folders(spool)
    except OSError:
        instances = []
    for instance in instances:
        path = spool.processing / instance / Path(*rel.parts)
        candidates.append((f"{PROCESSING}/{instance}/{rel}", path))
    candidates += [(f"{state}/{rel}", spool.path_in(state, rel)) for state in (DONE, FAILED)]
    for display, path in candidates:
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                return display, path
        except OSError:
            continue
    return None


def verify_manifest(
    spool: Spool, manifest: Path, key: SigningKey | None = None
) -> tuple[int, list[BadFile]]:
    """Check each line of a ``sha256sum`` manifest written by ``ctx-fetcher transfer``.

    Each file must be somewhere in the spool (it may have been imported already) with the listed
    SHA-256 (and, with a key, a valid signature). Returns how many lines were checked and the bad
    ones; raises OSError if the manifest cannot be read.
    """
    checked = 0
    bad = []
    text = manifest.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        checked += 1
        match = _MANIFEST_LINE.match(line)
        if not match:
            bad.append(BadFile(f"line {number}", "not a `<sha256>  <path>` line"))
            continue
        shown, expected = match["path"], match["sha256"].lower()
        parts = PurePosixPath(shown).parts
        try:
            if len(parts) < 2 or parts[0] not in STATES:
                raise UnsafeNameError("spool path", shown)
            rel = PurePosixPath(*parts[1:])
            _feed, name = parse_rel(rel)
        except UnsafeNameError:
            bad.append(BadFile(shown, "not a spool file path (incoming/<feed>/<date>/<name>.json)"))
            continue
        found = _locate(spool, rel)
        if found is None:
            bad.append(BadFile(shown, "missing: in no state of the spool"))
            continue
        display, path = found
        try:
            problem = _check_file(path, name, key, expected)
        except FileNotFoundError:
            problem = "missing: moved away while being checked"
        if problem is not None:
            bad.append(BadFile(shown, f"{problem} (at {display})"))
    return checked, bad
