"""Signing spool files (shared/signing.py) and signed spool names (shared/layout.py)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from shared import layout
from shared.errors import UnsafeNameError
from shared.signing import (
    SIGNATURE_HEX_LENGTH,
    SigningKey,
    SigningKeyError,
    check_key_file,
    check_key_text,
    load_signing_key,
)

FEED = "0b2d4e5f-1111-4222-8333-444455556666"
REPORT = "report--7c1e9a52-3b4d-4e5f-8a6b-1c2d3e4f5a6b"
KEY = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
WHEN = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def test_signature_is_truncated_hmac_sha256_of_the_bytes() -> None:
    key = SigningKey.from_secret(KEY)
    data = b'{"type":"bundle"}'
    full = hmac.new(KEY.encode(), data, hashlib.sha256).hexdigest()
    assert key.sign(data) == full[:SIGNATURE_HEX_LENGTH]
    assert len(key.sign(data)) == 32


def test_verify_accepts_only_the_right_bytes_and_key() -> None:
    key = SigningKey.from_secret(KEY)
    other = SigningKey.from_secret(KEY[::-1])
    signature = key.sign(b"abc")
    assert key.verify(b"abc", signature)
    assert not key.verify(b"abd", signature)
    assert not other.verify(b"abc", signature)
    assert not key.verify(b"abc", "0" * 32)


def test_key_file_is_stripped_bytes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"  {KEY}\n")
    assert SigningKey.from_file(path).sign(b"a") == SigningKey.from_secret(KEY).sign(b"a")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"short\n", id="too-short"),
        pytest.param(b"   \n", id="blank"),
    ],
)
def test_bad_key_file_error_names_the_file_not_the_key(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError) as info:
        SigningKey.from_file(path)
    assert str(path) in str(info.value)
    if content.strip():
        assert content.strip().decode() not in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the key file"):
        check_key_file(tmp_path / "absent")


def test_key_text_too_short_never_echoed() -> None:
    with pytest.raises(ValueError) as info:
        check_key_text("s3cret-but-short")
    assert "s3cret-but-short" not in str(info.value)
    assert check_key_text(f" {KEY} ") == KEY


def test_repr_hides_the_key() -> None:
    assert KEY not in repr(SigningKey.from_secret(KEY))


def test_load_signing_key_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY)
    assert load_signing_key(None, None) is None
    loaded = load_signing_key(None, path)
    assert loaded is not None and loaded.sign(b"a") == SigningKey.from_secret(KEY).sign(b"a")
    with pytest.raises(SigningKeyError, match="SPOOL_SIGNING_KEY_FILE"):
        load_signing_key(KEY, path)


def test_signed_name_round_trip() -> None:
    signature = SigningKey.from_secret(KEY).sign(b"abc")
    name = layout.SpoolName(WHEN, REPORT, "a" * 64, signature)
    assert name.filename == f"20240501T100000123456Z_{REPORT}_{'a' * 64}_{signature}.json"
    assert layout.SpoolName.parse(name.filename) == name
    rel = layout.relative_path(FEED, name)
    assert layout.parse_relative_path(rel) == (FEED, name)


def test_unsigned_name_is_unchanged() -> None:
    name = layout.SpoolName(WHEN, REPORT, "a" * 64)
    assert name.signature is None
    assert name.filename == f"20240501T100000123456Z_{REPORT}_{'a' * 64}.json"
    assert layout.SpoolName.parse(name.filename).signature is None


def test_signed_and_unsigned_names_sort_by_modified() -> None:
    early = layout.SpoolName(datetime(2024, 1, 2, tzinfo=UTC), REPORT, "b" * 64, "c" * 32)
    late = layout.SpoolName(datetime(2024, 1, 10, tzinfo=UTC), "objects", "a" * 64)
    assert sorted([late.filename, early.filename]) == [early.filename, late.filename]


@pytest.mark.parametrize(
    "suffix",
    [
        pytest.param("_" + "a" * 31, id="short-signature"),
        pytest.param("_" + "a" * 33, id="long-signature"),
        pytest.param("_" + "A" * 32, id="upper-case"),
        pytest.param("_" + "g" * 32, id="not-hex"),
        pytest.param("_", id="empty-signature"),
        pytest.param("_" + "a" * 32 + "_" + "b" * 32, id="two-signatures"),
    ],
)
def test_bad_signature_part_is_not_a_spool_name(suffix: str) -> None:
    filename = f"20240501T100000123456Z_{REPORT}_{'a' * 64}{suffix}.json"
    with pytest.raises(UnsafeNameError):
        layout.SpoolName.parse(filename)
    with pytest.raises(UnsafeNameError):
        layout.parse_relative_path(PurePosixPath(FEED, "2024", "05", "01", filename))


def test_signature_field_is_checked() -> None:
    with pytest.raises(UnsafeNameError):
        layout.SpoolName(WHEN, REPORT, "a" * 64, "../../etc/passwd")
