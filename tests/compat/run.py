"""``make compat``: the uploader's end-to-end tests once per supported pycti, each in its own venv.

For every pycti version in :data:`VERSIONS` this makes (or reuses) ``.venv-compat/<version>/``,
installs the project's ``dev`` extra with that exact pycti, and runs :data:`TESTS` with the OpenCTI
stand-in validating every GraphQL request against the schema of the matching platform release
(``CTX_STANDIN_OPENCTI_RELEASE``, see tests/standins/opencti_schema.py). It prints one PASS/FAIL
line per version and exits 1 if any version failed. Each version's full output is kept in
``.venv-compat/<version>.log``.

Only the standard library is used, so any ``python3`` (3.11+) with ``venv`` runs it:
``python3 -m tests.compat.run [--jobs 2] [--version 7.261026.0 ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENVS = REPO / ".venv-compat"

#: pycti version -> the OpenCTI release whose schema the stand-in enforces (pycti's major.minor
#: is the platform's; pycti 7 uses date versions, 7.YYMMDD.n). Newest 6.9 and 7.x on PyPI when
#: this list was last updated.
VERSIONS = {
    "6.5.10": "6.5",
    "6.8.17": "6.8",
    "6.9.29": "6.9",
    "7.261026.0": "7.x",
}
#: The uploader's end-to-end tests (api protocol through the real ctx-uploader process, amqp
#: protocol against a private RabbitMQ), a platform that forgot the connector, the health probe,
#: diode files written by that pycti adopted and imported as their connectors, and the schema
#: checks of the stand-in itself.
TESTS = [
    "tests/uploader/test_e2e.py",
    "tests/uploader/test_opencti_amqp.py",
    "tests/uploader/test_opencti_importer.py",
    "tests/uploader/test_platform_feedback.py",
    "tests/uploader/test_forgotten_connector.py",
    "tests/uploader/test_health.py",
    "tests/uploader/test_diode_e2e.py",
    "tests/standins/test_opencti_schema.py",
]


@dataclass
class Result:
    version: str
    release: str
    ok: bool
    stage: str
    seconds: float
    summary: str
    log: Path


def _stamp(version: str) -> str:
    """Changes when the venv must be reinstalled: another pycti or another pyproject.toml."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return f"pycti=={version} pyproject={digest}\n"


def _opencti_extra_without_pycti() -> list[str]:
    """The ``opencti`` extra's other requirements: installed too, with the pycti under test instead."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra = project.get("optional-dependencies", {}).get("opencti", [])
    return [req for req in extra if not re.match(r"\s*pycti\b", req)]


def _run(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        return subprocess.run(
            argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode


def _prepare(version: str, log: Path) -> bool:
    """Create or refresh ``.venv-compat/<version>``; pip's cache is left on, so a rerun is quick."""
    venv = VENVS / version
    python = venv / "bin" / "python"
    stamp = venv / ".compat-installed"
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == _stamp(version):
        return True
    if not python.exists() and _run([sys.executable, "-m", "venv", str(venv)], log) != 0:
        return False
    install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    requirements = ["-e", ".[dev]", f"pycti=={version}", *_opencti_extra_without_pycti()]
    if _run([*install, *requirements], log) != 0:
        return False
    stamp.write_text(_stamp(version), encoding="utf-8")
    return True


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check(version: str, release: str) -> Result:
    """Install and test one pycti version."""
    VENVS.mkdir(exist_ok=True)
    log = VENVS / f"{version}.log"
    log.write_text(f"pycti {version} against the OpenCTI {release} schema\n", encoding="utf-8")
    started = time.monotonic()
    if not _prepare(version, log):
        return Result(version, release, False, "install", time.monotonic() - started, "", log)
    env = {**os.environ, "CTX_STANDIN_OPENCTI_RELEASE": release}
    python = str(VENVS / version / "bin" / "python")
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    code = _run(argv, log, env)
    return Result(
        version, release, code == 0, "tests", time.monotonic() - started, _last_line(log), log
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="versions tested at once (default 2)")
    parser.add_argument(
        "--version",
        action="append",
        choices=sorted(VERSIONS),
        help="test only this pycti version (repeatable)",
    )
    args = parser.parse_args(argv)
    chosen = {v: VERSIONS[v] for v in (args.version or VERSIONS)}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda item: check(*item), chosen.items()))
    out = sys.stdout
    out.write("\nmake compat: pycti against the OpenCTI schema of its platform release\n")
    for r in results:
        verdict = "PASS" if r.ok else f"FAIL ({r.stage})"
        out.write(
            f"  {verdict:<15} pycti {r.version:<11} OpenCTI {r.release:<4} "
            f"{r.seconds:6.0f}s  {r.summary}\n"
        )
        if not r.ok:
            out.write(f"                  log: {r.log.relative_to(REPO)}\n")
    failed = [r.version for r in results if not r.ok]
    out.write(
        f"{len(results) - len(failed)} passed, {len(failed)} failed "
        f"in {time.monotonic() - started:.0f}s\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
