"""The sending side: the fetcher signs, ``ctx-fetcher transfer`` lists and manifests; the
receiving side checks with ``sha256sum -c`` and ``ctx-uploader verify --manifest``."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest

from shared.durable import sha256_file
from shared.layout import Spool, parse_relative_path, walk_bundles
from shared.signing import SigningKey
from tests.airgap.conftest import KEY, fetcher, uploader
from tests.standins.ctx import CTXStandIn
from tests.uploader.conftest import FEED_A, FEED_B, SpoolFiles

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")


def spool_paths(spool_dir: Path) -> list[str]:
    return [f"incoming/{e.relative.as_posix()}" for e in walk_bundles(spool_dir / "incoming")]


def touch_everything(ctx: CTXStandIn) -> None:
    """CTX re-indexes every object without changing it: the fetcher sees them all again."""
    for feed_id in ctx.active_feed_ids:
        for object_id in list(ctx.feeds[feed_id].objects):
            ctx.touch_record(feed_id, object_id)


def test_fetcher_signs_every_file_with_the_key(
    fetch_env: dict[str, str], signing_key: SigningKey
) -> None:
    result = fetcher(["once"], {**fetch_env, "SPOOL_SIGNING_KEY": KEY})

    assert result.exit_code == 0, result.output
    spool_dir = Path(fetch_env["SPOOL_DIR"])
    entries = list(walk_bundles(spool_dir / "incoming"))
    assert len(entries) > 5
    for entry in entries:
        _feed, name = parse_relative_path(entry.relative)
        assert name.signature is not None
        assert signing_key.verify(entry.path.read_bytes(), name.signature)
    assert KEY not in result.output


def test_turning_signing_on_later_writes_no_duplicates(
    fetch_env: dict[str, str], ctx: CTXStandIn, signing_key: SigningKey
) -> None:
    spool_dir = Path(fetch_env["SPOOL_DIR"])
    assert fetcher(["once"], fetch_env).exit_code == 0
    before = spool_paths(spool_dir)
    touch_everything(ctx)

    again = fetcher(["once"], {**fetch_env, "SPOOL_SIGNING_KEY": KEY})

    assert again.exit_code == 0, again.output
    assert "reports written 0" in again.output
    assert spool_paths(spool_dir) == before
    # A report that really changed is written again, now signed.
    ctx.update_report(ctx.active_feed_ids[0])
    changed = fetcher(["once"], {**fetch_env, "SPOOL_SIGNING_KEY": KEY})
    new = sorted(set(spool_paths(spool_dir)) - set(before))
    assert changed.exit_code == 0, changed.output
    assert len(new) == 1
    _feed, name = parse_relative_path(PurePosixPath(*PurePosixPath(new[0]).parts[1:]))
    assert name.signature is not None
    assert signing_key.verify((spool_dir / new[0]).read_bytes(), name.signature)


def test_transfer_lists_unmarked_files_and_mark_records_them(
    fetch_env: dict[str, str], ctx: CTXStandIn, tmp_path: Path
) -> None:
    spool_dir = Path(fetch_env["SPOOL_DIR"])
    assert fetcher(["once"], fetch_env).exit_code == 0
    # transfer needs no CTX setting: only the spool and the fetcher's state.
    env = {"SPOOL_DIR": str(spool_dir)}
    everything = spool_paths(spool_dir)

    listed = fetcher(["transfer"], env)
    marked = fetcher(["transfer", "--mark"], env)
    after_mark = fetcher(["transfer"], env)
    with_all = fetcher(["transfer", "--all", "-0"], env)

    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == everything
    assert marked.stdout == listed.stdout
    assert after_mark.stdout == ""
    assert with_all.stdout.split("\0") == [*everything, ""]
    ctx.update_report(ctx.active_feed_ids[1])
    assert fetcher(["once"], fetch_env).exit_code == 0
    fresh = fetcher(["transfer"], env).stdout.splitlines()
    assert fresh == sorted(set(spool_paths(spool_dir)) - set(everything))
    assert len(fresh) == 1
    with sqlite3.connect(spool_dir / ".fetcher" / "fetcher.sqlite3") as db:
        recorded = {row[0] for row in db.execute("SELECT path FROM transfers")}
        cursors = db.execute("SELECT COUNT(*) FROM cursors").fetchone()[0]
    assert recorded == set(everything)
    assert cursors > 0


@needs_rsync
def test_manifest_rsync_and_verify_on_the_receiving_side(
    fetch_env: dict[str, str], tmp_path: Path
) -> None:
    spool_dir = Path(fetch_env["SPOOL_DIR"])
    assert fetcher(["once"], {**fetch_env, "SPOOL_SIGNING_KEY": KEY}).exit_code == 0
    media = tmp_path / "media"
    media.mkdir()
    manifest = media / "manifest.sha256"
    listing = fetcher(
        ["transfer", "-0", "--manifest", str(manifest), "--mark"], {"SPOOL_DIR": str(spool_dir)}
    )
    assert listing.exit_code == 0, listing.output
    paths = listing.stdout.split("\0")[:-1]
    assert len(paths) == len(manifest.read_text().splitlines()) > 5
    # The sending side's own copy: rsync reads the NUL-separated list; sha256sum checks it.
    (tmp_path / "list0").write_text(listing.stdout)
    copy = subprocess.run(
        [
            "rsync",
            "-a",
            "--from0",
            f"--files-from={tmp_path / 'list0'}",
            f"{spool_dir}/",
            f"{media}/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert copy.returncode == 0, copy.stderr
    check = subprocess.run(
        ["sha256sum", "--strict", "-c", str(manifest)],
        cwd=media,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(paths)

    # Receiving side: a spool fed from the media; one file already imported (done/).
    receiving = Spool(tmp_path / "receiving")
    receiving.ensure()
    shutil.copytree(media / "incoming", receiving.incoming, dirs_exist_ok=True)
    first = PurePosixPath(paths[0]).relative_to("incoming")
    receiving.path_in("done", first).parent.mkdir(parents=True)
    receiving.path_in("incoming", first).rename(receiving.path_in("done", first))
    env = {"SPOOL_DIR": str(receiving.root), "SPOOL_SIGNING_KEY": KEY}

    ok = uploader(["verify", "--manifest", str(manifest)], env)
    assert ok.exit_code == 0, ok.output
    assert f"{len(paths)} checked, 0 bad" in ok.output

    second = PurePosixPath(paths[1]).relative_to("incoming")
    third = PurePosixPath(paths[2]).relative_to("incoming")
    receiving.path_in("incoming", second).unlink()
    with receiving.path_in("incoming", third).open("ab") as fh:
        fh.write(b" ")
    bad = uploader(["verify", "--manifest", str(manifest)], env)
    assert bad.exit_code == 1
    assert f"MISSING {paths[1]}: missing" in bad.output
    assert f"BAD {paths[2]}: SHA-256 is" in bad.output
    assert f"{len(paths)} checked, 2 bad" in bad.output
    # sha256sum agrees on the same manifest.
    assert (
        subprocess.run(
            ["sha256sum", "--quiet", "-c", str(manifest)],
            cwd=receiving.root,
            capture_output=True,
            timeout=60,
        ).returncode
        != 0
    )


def test_tar_with_the_list_and_manifest(fetch_env: dict[str, str], tmp_path: Path) -> None:
    spool_dir = Path(fetch_env["SPOOL_DIR"])
    assert fetcher(["once"], fetch_env).exit_code == 0
    manifest = tmp_path / "m.sha256"
    listing = fetcher(["transfer", "--manifest", str(manifest)], {"SPOOL_DIR": str(spool_dir)})
    (tmp_path / "list").write_text(listing.stdout)
    archive = tmp_path / "spool.tar"
    made = subprocess.run(
        ["tar", "-C", str(spool_dir), "-cf", str(archive), "-T", str(tmp_path / "list")],
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", str(archive)], check=True, timeout=60)
    check = subprocess.run(
        ["sha256sum", "--strict", "-c", str(manifest)], cwd=out, capture_output=True, timeout=60
    )
    assert check.returncode == 0, check.stdout
    assert spool_paths(out) == listing.stdout.splitlines()


def test_manifest_refuses_a_file_that_does_not_match_its_name(
    fetch_env: dict[str, str], tmp_path: Path
) -> None:
    spool_dir = Path(fetch_env["SPOOL_DIR"])
    assert fetcher(["once"], fetch_env).exit_code == 0
    victim = spool_dir / spool_paths(spool_dir)[0]
    victim.write_bytes(victim.read_bytes() + b"\n")
    manifest = tmp_path / "m.sha256"
    env = {"SPOOL_DIR": str(spool_dir)}

    result = fetcher(["transfer", "--manifest", str(manifest), "--mark"], env)

    assert result.exit_code != 0
    assert victim.name in result.output
    assert not manifest.exists()
    assert list(tmp_path.glob(".m.sha256*")) == []
    assert len(fetcher(["transfer"], env).stdout.splitlines()) == len(spool_paths(spool_dir))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("not a line", "not a `<sha256>  <path>` line", id="garbage"),
        pytest.param(f"{'a' * 64}  ../etc/passwd", "not a spool file path", id="traversal"),
        pytest.param(f"{'a' * 64}  incoming/x.json", "not a spool file path", id="not-spool"),
    ],
)
def test_verify_manifest_bad_lines(
    spool: Spool, uploader_env: dict[str, str], tmp_path: Path, line: str, expected: str
) -> None:
    manifest = tmp_path / "m.sha256"
    manifest.write_text(line + "\n")

    result = uploader(["verify", "--manifest", str(manifest)], uploader_env)

    assert result.exit_code == 1
    assert expected in result.output


def test_transfer_lists_only_spool_bundles(fetch_env: dict[str, str], tmp_path: Path) -> None:
    spool_dir = Path(fetch_env["SPOOL_DIR"])
    assert fetcher(["once"], fetch_env).exit_code == 0
    real = spool_paths(spool_dir)
    folder = (spool_dir / real[0]).parent
    (folder / f".{Path(real[0]).name}.abc123.tmp").write_bytes(b"{")  # a copy in progress
    (folder / "notes.json").write_text("{}")  # not a spool name
    (folder / Path(real[1]).name.replace(".json", ".json.receipt")).write_text("{}")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    # A symlink under a valid spool name (another SHA-256) is never listed either.
    _feed, name = parse_relative_path(PurePosixPath(*PurePosixPath(real[0]).parts[1:]))
    link = folder / replace(name, sha256="0" * 64).filename
    link.symlink_to(outside)

    listed = fetcher(["transfer"], {"SPOOL_DIR": str(spool_dir)})

    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == real


@pytest.mark.parametrize(
    ("extra", "variables"),
    [
        pytest.param({"SPOOL_SIGNING_KEY": "too-short"}, ["SPOOL_SIGNING_KEY"], id="too-short"),
        pytest.param(
            {"SPOOL_SIGNING_KEY": KEY, "SPOOL_SIGNING_KEY_FILE": "KEYFILE"},
            ["SPOOL_SIGNING_KEY", "SPOOL_SIGNING_KEY_FILE"],
            id="both",
        ),
    ],
)
def test_fetcher_key_settings_errors_write_nothing(
    fetch_env: dict[str, str], tmp_path: Path, extra: dict[str, str], variables: list[str]
) -> None:
    key_file = tmp_path / "spool.key"
    key_file.write_text(KEY)
    env = {**fetch_env, **{k: str(key_file) if v == "KEYFILE" else v for k, v in extra.items()}}

    result = fetcher(["once"], env)

    assert result.exit_code != 0
    for variable in variables:
        assert variable in result.output
    assert KEY not in result.output and "too-short" not in result.output
    assert not Path(fetch_env["SPOOL_DIR"]).exists()


def test_verify_manifest_finds_files_in_every_state(
    spool: Spool, files: SpoolFiles, uploader_env: dict[str, str], tmp_path: Path
) -> None:
    placed = {
        "incoming": files.add(FEED_A),
        "done": files.add(FEED_A, state="done"),
        "failed": files.add(FEED_B, state="failed"),
    }
    claimed_src = files.add(FEED_B)
    rel = claimed_src.relative_to(spool.incoming)
    claimed = spool.processing / "other-uploader" / rel
    claimed.parent.mkdir(parents=True)
    claimed_src.rename(claimed)
    lines = [
        f"{sha256_file(path)}  incoming/{path.relative_to(spool.state_dir(state)).as_posix()}"
        for state, path in placed.items()
    ]
    # sha256sum's binary-mode form ("<sha> *<path>") is accepted too.
    lines.append(f"{sha256_file(claimed)} *incoming/{rel.as_posix()}")
    manifest = tmp_path / "m.sha256"
    manifest.write_text("\n".join(lines) + "\n")

    result = uploader(["verify", "--manifest", str(manifest)], uploader_env)

    assert result.exit_code == 0, result.output
    assert "4 checked, 0 bad" in result.output
