"""The one line for a platform that refuses the uploader's set-up (a :class:`PlatformConfigError`):
a refused token or user, or a pycti that does not fit the platform, each saying what to change.

pycti is not imported here: its version is read from its distribution metadata, so the CLI can
name it without loading pycti.
"""

from __future__ import annotations

import importlib.metadata

from uploader.errors import PlatformAuthError, PyctiMismatchError


def auth_refusal(code: str, message: str, *, work_id: str | None = None) -> PlatformAuthError:
    """The one line for a refused token, or a token whose user may not act as a connector."""
    said = " ".join(p for p in (code, message) if p) or "refused"
    if code == "FORBIDDEN_ACCESS" or "not allowed" in message.lower():
        # registerConnector, workAdd and stixBundlePush need the CONNECTORAPI capability
        # (@auth(for: [CONNECTORAPI]) in opencti-graphql config/schema/opencti.graphql).
        return PlatformAuthError(
            f"OpenCTI refused the user of OPENCTI_TOKEN ({said}): give that user the "
            'CONNECTORAPI capability (a role with "Connectors API usage"), or set '
            "OPENCTI_TOKEN to the token of a user that has it",
            work_id=work_id,
        )
    return PlatformAuthError(
        f"OpenCTI refused OPENCTI_TOKEN ({said}): set OPENCTI_TOKEN to the API token of the "
        "connector's OpenCTI user",
        work_id=work_id,
    )


def installed_pycti() -> str:
    """The installed pycti's version (its distribution metadata; pycti itself is not imported)."""
    try:
        return importlib.metadata.version("pycti")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pycti_install(platform_version: str) -> str | None:
    """The pip command that installs the pycti of ``platform_version`` (README, "Matching pycti
    to the platform": pycti carries its platform's major.minor; 7.x minors are dates)."""
    parts = platform_version.split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return None
    return f"pip install 'pycti=={parts[0]}.{parts[1]}.*'"


def mismatch(
    platform_version: str | None, detail: str = "", *, url: str = "", work_id: str | None = None
) -> PyctiMismatchError:
    """The one line for a pycti that does not fit the platform: both versions, the command.

    ``detail`` is the platform's refusal of a request (its schema has no such field), when that
    is how the mismatch showed; without it, the versions alone told.
    """
    pycti_version = installed_pycti()
    where = f" at {url}" if url else ""
    platform = f"OpenCTI {platform_version or '(version unknown)'}{where}"
    install = pycti_install(platform_version) if platform_version else None
    if detail:
        why = (
            f"pycti {pycti_version} does not fit {platform}: its schema refused pycti's "
            f"request ({detail[:200]})"
        )
    else:
        why = f"pycti {pycti_version} is newer than {platform} and cannot work with it"
    remedy = (
        f"install the matching pycti: {install}"
        if install
        else "install the pycti of the platform's version: pip install 'pycti==<major>.<minor>.*'"
    )
    return PyctiMismatchError(
        f"{why}; {remedy}",
        pycti_version=pycti_version,
        platform_version=platform_version,
        install=install,
        detail=detail,
        work_id=work_id,
    )
