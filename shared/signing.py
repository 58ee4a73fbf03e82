"""Signing spool files with a key shared by the fetcher and the uploader.

A signed bundle carries its proof in its name, ``<modified>_<subject>_<sha256>_<hmac>.json``, so
the proof travels with the file through any copy tool and publishing stays one atomic rename.
``<hmac>`` is HMAC-SHA256 (RFC 2104) over the file's exact bytes, truncated to its first 128 bits
(32 lower-case hex digits). RFC 2104 §5 allows truncating to no less than half the hash output
(and no less than 80 bits), and 128 bits keep forgery out of reach while names stay readable.

The key never leaves :class:`SigningKey`: its ``repr`` hides it, and errors name the setting or
file, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

from shared.errors import SharedError

#: Shortest key accepted, in characters (or bytes for a key file): 128 bits of hex.
MIN_KEY_LENGTH = 32
#: Hex digits of the truncated HMAC kept in a file name (128 bits).
SIGNATURE_HEX_LENGTH = 32
SIGNATURE_RE = re.compile(rf"^[0-9a-f]{{{SIGNATURE_HEX_LENGTH}}}$")


class SigningKeyError(SharedError):
    """A signing key cannot be used; the message names where it came from, never the key."""


class SigningKey:
    """The shared HMAC key. Build with :meth:`from_secret` or :meth:`from_file`."""

    __slots__ = ("_key", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise SigningKeyError(f"{source}: the key must be at least {MIN_KEY_LENGTH} characters")
        self._key = key
        self.source = source

    def __repr__(self) -> str:
        return f"SigningKey(source={self.source!r})"

    @classmethod
    def from_secret(cls, secret: str, source: str = "SPOOL_SIGNING_KEY") -> SigningKey:
        """A key given as text (surrounding whitespace is not part of it)."""
        return cls(secret.strip().encode("utf-8"), source)

    @classmethod
    def from_file(cls, path: Path) -> SigningKey:
        """A key read from ``path``: the file's bytes with surrounding whitespace stripped."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as fh:
                data = fh.read(64 * 1024 + 1)
        except OSError as exc:
            raise SigningKeyError(
                f"cannot read the key file {path}: {exc.strerror or exc}"
            ) from None
        if len(data) > 64 * 1024:
            raise SigningKeyError(f"the key file {path} is larger than 64 KiB")
        return cls(data.strip(), f"key file {path}")

    @property
    def mask_text(self) -> str | None:
        """The key as text for the log masker (None if it is not UTF-8)."""
        try:
            return self._key.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def new_mac(self) -> hmac.HMAC:
        """An HMAC-SHA256 object to feed a file in chunks; finish with :func:`signature_of`."""
        return hmac.new(self._key, digestmod=hashlib.sha256)

    def sign(self, data: bytes) -> str:
        """The signature of ``data`` as it appears in a file name (32 lower-case hex digits)."""
        mac = self.new_mac()
        mac.update(data)
        return signature_of(mac)

    def verify(self, data: bytes, signature: str) -> bool:
        """True if ``signature`` is the signature of ``data`` (constant-time comparison)."""
        return hmac.compare_digest(self.sign(data), signature)

    def verify_mac_hex(self, mac_hex: str, signature: str) -> bool:
        """True if ``signature`` matches the full hex MAC of a file's bytes (constant time)."""
        return hmac.compare_digest(mac_hex[:SIGNATURE_HEX_LENGTH], signature)


def signature_of(mac: hmac.HMAC) -> str:
    """The truncated hex form of a finished MAC (RFC 2104 §5: the leftmost bits are kept)."""
    return mac.hexdigest()[:SIGNATURE_HEX_LENGTH]


def check_key_text(value: str) -> str:
    """``value`` stripped if it is long enough to be a signing key, else ValueError (for settings)."""
    stripped = value.strip()
    if len(stripped) < MIN_KEY_LENGTH:
        raise ValueError(
            f"must be at least {MIN_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`)"
        )
    return stripped


def check_key_file(path: Path) -> Path:
    """``path`` if it holds a usable key, else ValueError naming the file only (for settings)."""
    try:
        SigningKey.from_file(path)
    except SigningKeyError as exc:
        raise ValueError(str(exc)) from None
    return path


def load_signing_key(secret: str | None, key_file: Path | None) -> SigningKey | None:
    """The key configured by ``SPOOL_SIGNING_KEY`` or ``SPOOL_SIGNING_KEY_FILE``, or None."""
    if secret is not None and key_file is not None:
        raise SigningKeyError("set SPOOL_SIGNING_KEY or SPOOL_SIGNING_KEY_FILE, not both")
    if secret is not None:
        return SigningKey.from_secret(secret)
    if key_file is not None:
        return SigningKey.from_file(key_file)
    return None
